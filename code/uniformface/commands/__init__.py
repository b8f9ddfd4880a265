"""The scripts: one module per script of code/, each with `main(argv=None) -> int` (argument parsing,
progress and calls into the library; torch is imported only after the arguments are parsed).

`python code/<name>.py` runs `uniformface.commands.<name>.main`, and so does the installed command
`uniformface-<name>` (underscores as hyphens: `uniformface-gather-results`), listed in pyproject.toml.
`demo` is not installed as a command: it runs the scripts of a source tree and its toy config.
"""

INSTALLED = ("preprocess", "train", "test", "verify", "embed", "export", "ablate", "gather_results", "pack_dataset",
             "make_toy_data")
SCRIPTS = (*INSTALLED, "demo")
