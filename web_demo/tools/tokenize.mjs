// Token ids of texts with the page's tokenizer (web_demo/tokenizer.js), for comparing with Python:
//   node web_demo/tools/tokenize.mjs device_tokenizer.json [MAX_LENGTH] < texts.json > ids.json
// texts.json is a JSON list of strings; the output is a JSON list of id lists.
import { readFileSync } from "node:fs";
import { Tokenizer } from "../tokenizer.js";

const [specPath, maxLength] = process.argv.slice(2);
if (!specPath) {
  console.error("usage: node tokenize.mjs device_tokenizer.json [MAX_LENGTH] < texts.json");
  process.exit(2);
}
const tokenizer = new Tokenizer(JSON.parse(readFileSync(specPath, "utf8")));
const texts = JSON.parse(readFileSync(0, "utf8"));
const limit = maxLength === undefined ? null : Number(maxLength);
process.stdout.write(JSON.stringify(texts.map((t) => tokenizer.encode(t, limit))));
