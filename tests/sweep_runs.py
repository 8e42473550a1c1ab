"""Runs the Fashion-MNIST script's main() once per argument list of the JSON file named by argv[1],
one after another in this process (TensorFlow starts once), and prints a JSON list with each run's
exit code, stdout and stderr; an exception that escapes main() is recorded as its traceback. Called
by conftest's run_fashion_runs_in_one_process."""
import contextlib
import io
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kit.errors import exit_code_of  # noqa: E402
import vae_fashion_mnist  # noqa: E402

results = []
for argv in json.load(open(sys.argv[1])):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = exit_code_of(vae_fashion_mnist.main, argv)
        except BaseException:  # what the test looks for: anything that would print a traceback
            code = None
            traceback.print_exc()
    results.append({"argv": argv, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
print(json.dumps(results))
