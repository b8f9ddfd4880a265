"""The scripts: one module per script of code/, each with `main(argv=None) -> int` (argument parsing,
progress and calls into the library; torch is imported only after the arguments are parsed).

`python code/<name>.py` runs `uniformface.commands.<name>.main`, and so does the installed command
`uniformface-<name>` (underscores as hyphens: `uniformface-gather-results`), listed in pyproject.toml.
`demo` and `figure` are not installed as commands: they run the scripts of a source tree and its configs.
"""

INSTALLED = ("preprocess", "train", "test", "verify", "embed", "export", "ablate", "gather_results", "pack_dataset",
             "make_toy_data", "plot_runs", "plot_sphere")
SCRIPTS = (*INSTALLED, "demo", "figure")
