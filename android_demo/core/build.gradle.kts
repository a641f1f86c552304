// Plain Java, no Android: everything the app computes except running the graphs (see README.md).
plugins {
    `java-library`
}

java {
    // Android (minSdk 24) provides the Java 8 API; the JVM tests compile the core with --release 8.
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

tasks.withType<JavaCompile>().configureEach {
    options.encoding = "UTF-8"
    options.compilerArgs.addAll(listOf("-Xlint:all", "-Xlint:-options"))
}

// The golden-file tests (no JUnit): ./gradlew :core:goldenTest -Pgoldens=/path/to/goldens.json
// (goldens from android_demo/tools/make_goldens.py; tests/test_android_jvm.py does all of it).
tasks.register<JavaExec>("goldenTest") {
    group = "verification"
    description = "Checks the core against golden outputs of the Python reference runtime."
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("io.edgekit.core.GoldenTest")
    args(project.findProperty("goldens")?.toString() ?: "goldens.json")
}
