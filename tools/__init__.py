"""flmm's command-line tools; installed as the package `flmm_tools`, whose `main`s are the console scripts."""
