"""The study: the experiment grid, the results report, figures, the HTML page and the data
exploration. It reads only the files runs wrote (names in `run_files`) and never imports the
training stack."""
