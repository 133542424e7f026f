"""A pool whose shards do not all finish: one raises (the pool catches it), one is terminated."""

import multiprocessing
import sys
import time

from tqdm import tqdm


def shard(index: int, halfway: "multiprocessing.synchronize.Event") -> int:
    # mininterval=0: tqdm counts in a local variable between repaints; repaint every item.
    for n in tqdm(range(200), desc=f"shard {index}", mininterval=0):
        if index == 0 and n == 120:
            raise ValueError("bad row 120")
        if index == 1 and n == 100:
            halfway.set()
            time.sleep(120)  # still working when the pool is terminated
    return index


if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    with context.Manager() as manager:
        halfway = manager.Event()
        with context.Pool(2) as pool:
            raising = pool.apply_async(shard, (0, halfway))
            slow = pool.apply_async(shard, (1, halfway))
            try:
                raising.get(timeout=60)
            except ValueError as error:
                print(f"shard 0 failed: {error}", flush=True)
            halfway.wait(60)
        # Leaving the pool's block terminated shard 1.
