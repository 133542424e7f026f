"""tqdm bars in every worker of a multiprocessing pool (start method from argv)."""

import multiprocessing
import sys

from tqdm import tqdm


def work(index: int) -> int:
    for _ in tqdm(range(30), desc=f"worker {index}", leave=False):
        pass
    return index


if __name__ == "__main__":
    with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:
        print(sorted(pool.map(work, range(4))))
