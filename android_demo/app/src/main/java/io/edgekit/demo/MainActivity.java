package io.edgekit.demo;

import android.app.Activity;
import android.os.Bundle;
import android.view.View;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.EditText;
import android.widget.SeekBar;
import android.widget.Spinner;
import android.widget.TextView;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

import io.edgekit.core.BundleException;
import io.edgekit.core.ExitRule;
import io.edgekit.core.Prediction;
import io.edgekit.core.Predictor;

/**
 * Loads the bundle ({@code assets/bundle.edgepack}, decoded on the phone, or the unpacked files in
 * {@code assets/bundle/}), classifies what the user types at a fixed exit layer
 * or with a dynamic exit (PABEE patience, DeeBERT entropy), and shows label, scores, the exit
 * layer and latency. Everything but the UI and LiteRT is in the plain-Java {@code core} module.
 */
public final class MainActivity extends Activity {
    private static final String BUNDLE_ASSETS = "bundle";
    private static final int DEFAULT_PATIENCE = 2;           // edgekit_device's defaults
    private static final double DEFAULT_ENTROPY = 0.10;
    private static final double ENTROPY_STEP = 0.01;
    private static final int ENTROPY_STEPS = 150;            // thresholds 0.01 .. 1.50 nats

    /** One entry of the exit spinner. */
    private static final class Choice {
        final String title;
        final Integer layer;   // a fixed exit
        final String mode;     // or "patience" / "entropy"

        Choice(String title, Integer layer, String mode) {
            this.title = title;
            this.layer = layer;
            this.mode = mode;
        }

        @Override
        public String toString() {
            return title;
        }
    }

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final List<Choice> choices = new ArrayList<>();
    private io.edgekit.core.Bundle bundle;
    private Predictor predictor;
    private TfliteGraphRunner runner;
    private int patience = DEFAULT_PATIENCE;
    private double entropyThreshold = DEFAULT_ENTROPY;

    private TextView bundleInfo;
    private EditText input;
    private Spinner exitChoice;
    private TextView parameterLabel;
    private SeekBar parameter;
    private Button classify;
    private TextView label;
    private TextView details;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        bundleInfo = findViewById(R.id.bundle_info);
        input = findViewById(R.id.input);
        exitChoice = findViewById(R.id.exit_choice);
        parameterLabel = findViewById(R.id.parameter_label);
        parameter = findViewById(R.id.parameter);
        classify = findViewById(R.id.classify);
        label = findViewById(R.id.label);
        details = findViewById(R.id.details);
        classify.setOnClickListener(v -> classify());
        worker.execute(this::load);
    }

    @Override
    protected void onDestroy() {
        worker.execute(() -> {
            if (runner != null) {
                runner.close();
            }
        });
        worker.shutdown();
        super.onDestroy();
    }

    // -- loading (worker thread)

    private void load() {
        try {
            io.edgekit.core.Bundle loaded = AssetBundleFiles.open(getAssets(), BUNDLE_ASSETS);
            int threads = Math.max(1, Math.min(4, Runtime.getRuntime().availableProcessors()));
            TfliteGraphRunner graphs = new TfliteGraphRunner(loaded, threads);
            Predictor ready = new Predictor(loaded, graphs);
            ready.predict("", null); // warm-up: the first run allocates the interpreters' tensors
            runner = graphs;
            runOnUiThread(() -> onLoaded(loaded, ready));
        } catch (BundleException | RuntimeException e) {
            runOnUiThread(() -> bundleInfo.setText(getString(R.string.no_bundle, e.getMessage())));
        }
    }

    private void onLoaded(io.edgekit.core.Bundle loaded, Predictor ready) {
        bundle = loaded;
        predictor = ready;
        bundleInfo.setText(String.format(Locale.ROOT,
                "%s · %s · %s · %d layer%s · %d labels · max %d tokens · %s tokenizer",
                loaded.format, loaded.precision, loaded.layout, loaded.depth(), loaded.depth() == 1 ? "" : "s",
                loaded.labels.size(), loaded.maxLength, predictor.tokenizer.type));
        choices.clear();
        int selected = 0;
        for (int layer : loaded.exitLayers) {
            String title = loaded.isPerLayer() ? getString(R.string.fixed_exit, layer, loaded.depth())
                    : getString(R.string.fixed_only, layer);
            if (layer == loaded.defaultExit()) {
                selected = choices.size();
            }
            choices.add(new Choice(title, layer, null));
        }
        if (loaded.isPerLayer()) {
            choices.add(new Choice(getString(R.string.dynamic_patience), null, "patience"));
            choices.add(new Choice(getString(R.string.dynamic_entropy), null, "entropy"));
        }
        ArrayAdapter<Choice> adapter = new ArrayAdapter<>(this, android.R.layout.simple_spinner_item, choices);
        adapter.setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item);
        exitChoice.setAdapter(adapter);
        exitChoice.setSelection(selected);
        exitChoice.setOnItemSelectedListener(new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, View view, int position, long id) {
                showParameter(choices.get(position));
            }

            @Override
            public void onNothingSelected(AdapterView<?> parent) {
            }
        });
        parameter.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
            @Override
            public void onProgressChanged(SeekBar seekBar, int progress, boolean fromUser) {
                Choice choice = (Choice) exitChoice.getSelectedItem();
                if ("patience".equals(choice.mode)) {
                    patience = progress + 1;
                } else if ("entropy".equals(choice.mode)) {
                    entropyThreshold = (progress + 1) * ENTROPY_STEP;
                }
                updateParameterLabel(choice);
            }

            @Override
            public void onStartTrackingTouch(SeekBar seekBar) {
            }

            @Override
            public void onStopTrackingTouch(SeekBar seekBar) {
            }
        });
        classify.setEnabled(true);
    }

    private void showParameter(Choice choice) {
        if (choice.mode == null) {
            parameter.setVisibility(View.GONE);
            parameterLabel.setVisibility(View.GONE);
            return;
        }
        if (choice.mode.equals("patience")) {
            parameter.setMax(Math.max(0, bundle.depth() - 2)); // patience 1 .. depth - 1
            patience = Math.min(patience, Math.max(1, bundle.depth() - 1));
            parameter.setProgress(patience - 1);
        } else {
            parameter.setMax(ENTROPY_STEPS - 1);
            parameter.setProgress((int) Math.round(entropyThreshold / ENTROPY_STEP) - 1);
        }
        parameter.setVisibility(View.VISIBLE);
        parameterLabel.setVisibility(View.VISIBLE);
        updateParameterLabel(choice);
    }

    private void updateParameterLabel(Choice choice) {
        if ("patience".equals(choice.mode)) {
            parameterLabel.setText(getString(R.string.patience_value, patience));
        } else if ("entropy".equals(choice.mode)) {
            parameterLabel.setText(String.format(Locale.ROOT, getString(R.string.entropy_value), entropyThreshold));
        }
    }

    // -- classifying

    private void classify() {
        if (predictor == null) {
            return;
        }
        final String text = input.getText().toString();
        final Choice choice = (Choice) exitChoice.getSelectedItem();
        final int patienceNow = patience;
        final double thresholdNow = entropyThreshold;
        classify.setEnabled(false);
        worker.execute(() -> {
            String error = null;
            Prediction prediction = null;
            String how;
            try {
                if (choice.mode == null) {
                    how = "fixed exit";
                    prediction = predictor.predict(text, choice.layer);
                } else if (choice.mode.equals("patience")) {
                    how = "patience " + patienceNow;
                    prediction = predictor.predictDynamic(text, ExitRule.patience(patienceNow), null);
                } else {
                    how = String.format(Locale.ROOT, "entropy < %.2f", thresholdNow);
                    prediction = predictor.predictDynamic(text, ExitRule.entropy(thresholdNow), null);
                }
            } catch (BundleException | RuntimeException e) {
                how = "";
                error = e.getMessage();
            }
            final Prediction result = prediction;
            final String message = error;
            final String rule = how;
            runOnUiThread(() -> {
                classify.setEnabled(true);
                if (message != null) {
                    label.setText("");
                    details.setText(message);
                } else {
                    show(result, rule);
                }
            });
        });
    }

    private void show(Prediction p, String rule) {
        label.setText(String.format(Locale.ROOT, "%s  %.1f%%", p.label, 100.0 * p.scores[p.labelId]));
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < p.scores.length; i++) {
            out.append(String.format(Locale.ROOT, "%6.1f%%  %s%s%n", 100.0 * p.scores[i], bundle.labels.get(i),
                    i == p.labelId ? "  ◀" : ""));
        }
        out.append('\n');
        out.append(String.format(Locale.ROOT, "exit: layer %d of %d (%s)%n", p.exitLayer, bundle.depth(), rule));
        out.append(String.format(Locale.ROOT, "layers computed: %d%n", p.layerEvaluations));
        if (p.layerPredictions.length > 1) {
            out.append("per-layer predictions:");
            for (int k = 0; k < p.layerPredictions.length; k++) {
                out.append(String.format(Locale.ROOT, " %d:%s", k + 1, bundle.labels.get(p.layerPredictions[k])));
            }
            out.append('\n');
        }
        out.append(String.format(Locale.ROOT, "tokens: %d (max %d)%n", p.inputIds.length, bundle.maxLength));
        out.append(String.format(Locale.ROOT, "latency: tokenize %.2f ms · model %.2f ms · total %.2f ms%n",
                p.tokenizeNanos / 1e6, p.inferenceNanos / 1e6, p.totalNanos() / 1e6));
        details.setText(out.toString());
    }
}
