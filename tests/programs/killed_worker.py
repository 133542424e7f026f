"""A multiprocessing worker killed by SIGKILL with a bar open (the OOM killer, say)."""

import multiprocessing
import os
import signal
import sys

from tqdm import tqdm


def work() -> None:
    bar = tqdm(total=100, desc="doomed worker", mininterval=0)
    bar.update(25)
    from progressista.client import flush

    flush()  # the server has the bar at 25 before the kill
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    worker = multiprocessing.Process(target=work)
    worker.start()
    worker.join()
    print(worker.exitcode)
