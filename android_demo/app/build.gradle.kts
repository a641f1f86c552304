plugins {
    id("com.android.application")
}

android {
    namespace = "io.edgekit.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "io.edgekit.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }

    androidResources {
        // Graphs are read into a direct buffer; storing them uncompressed keeps the APK's copy mappable.
        noCompress += listOf("tflite", "edgepack")  // a pack is compressed already
    }
}

dependencies {
    implementation(project(":core"))
    // LiteRT (formerly TensorFlow Lite): org.tensorflow.lite.Interpreter, bundled CPU runtime.
    implementation("com.google.ai.edge.litert:litert:1.4.1")
}
