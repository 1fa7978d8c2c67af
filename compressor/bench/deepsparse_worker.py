"""DeepSparse worker of ``compress bench model`` (run as a script by :class:`.engines.DeepSparseWorker`).

Runs under whichever interpreter has ``deepsparse`` (possibly a separate venv without torch or
this package), so it imports only the standard library, numpy and deepsparse.

``python deepsparse_worker.py MODEL.onnx INPUTS.npz OUTPUTS.npz BATCH THREADS COPIES``: compiles
``deepsparse.Engine(MODEL, batch_size=BATCH, num_cores=THREADS)``, runs each input copy once
(arrays ``c{copy}_{k}`` of INPUTS.npz) and saves the outputs to OUTPUTS.npz, then prints one JSON
line ``{"engine": ..., "n_outputs": ...}``. After that each line on stdin is a copy index: the
worker runs that copy and prints ``{"s": seconds}`` (``time.perf_counter`` around
``engine.run``). End of stdin ends it. Any failure prints ``{"error": "..."}`` and exits 1.
The protocol has stdout to itself: everything else the engine prints goes to stderr.
"""

import json
import os
import sys
import time


def main(argv):
    proto = os.fdopen(os.dup(1), "w")  # the protocol's own handle on stdout
    os.dup2(2, 1)  # engine banners and logs go to stderr

    def say(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        import numpy as np
        from deepsparse import Engine

        model, inputs, outputs, batch, threads, copies = argv
        copies = int(copies)
        with np.load(inputs, allow_pickle=False) as data:
            n_inputs = sum(1 for k in data.files if k.startswith("c0_"))
            feeds = [[data[f"c{c}_{k}"] for k in range(n_inputs)] for c in range(copies)]
        engine = Engine(model, batch_size=int(batch), num_cores=int(threads))
        first = [engine.run(f) for f in feeds]
        np.savez(outputs, **{f"c{c}_{k}": a for c, outs in enumerate(first) for k, a in enumerate(outs)})
        say({"engine": " ".join(str(engine).split())[:300], "n_outputs": len(first[0])})
    except Exception as e:  # noqa: BLE001  (one line back to the benchmark, whatever failed)
        say({"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})
        return 1
    for line in sys.stdin:
        try:
            feed = feeds[int(line)]
            t0 = time.perf_counter()
            engine.run(feed)
            say({"s": time.perf_counter() - t0})
        except Exception as e:  # noqa: BLE001
            say({"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
