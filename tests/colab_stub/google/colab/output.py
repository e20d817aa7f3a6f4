"""`output` as in Colab: callbacks that the page's buttons call, and JavaScript."""

from google.colab import dialog, log

# name -> function, as Colab keeps them; the tests call them as a button's script would
# (google.colab.kernel.invokeFunction(name, args, kwargs) in the page).
_functions = {}


def register_callback(function_name, callback):
    """Register a function that JavaScript in the page may call later: no dialog."""
    _functions[function_name] = callback
    log(f"callback {function_name}")


def eval_js(script, ignore_result=False):
    """Run JavaScript in the browser and wait for its result: it may wait for a click."""
    dialog("output.eval_js", script[:40].replace("\n", " "))


def serve_kernel_port_as_iframe(
    port, path="/", width="100%", height="400", cache_in_notebook=False
):
    """Show a page that the kernel serves on `port` in a frame: no dialog."""
    log(f"iframe of port {port}")
