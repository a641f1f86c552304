// The edgekit demo app: `app` (Android, LiteRT) on top of `core` (plain Java: bundle, tokenizer, exits).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "edgekit-demo"
include(":core", ":app")
