"""Pull an artifact's files with oras-py into a directory.

Run with the python of the test virtualenv (oras==0.2.43), by the ocifs
benchmarks (tests/src/tools.rs, `oras_pull`):

    oras_pull.py --target HOST/REPO:TAG --outdir DIR

Plain HTTP, anonymous (the benchmark registry is loopback). Prints the
files written, one a line.
"""

import argparse

import oras.provider


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT/REPO:TAG")
    p.add_argument("--outdir", required=True)
    args = p.parse_args()
    host = args.target.split("/", 1)[0]
    registry = oras.provider.Registry(host, insecure=True, auth_backend="token")
    for path in registry.pull(target=args.target, outdir=args.outdir):
        print(path)


if __name__ == "__main__":
    main()
