"""Runs openmined-psi 2.0.6 (C++ core, P-256) on two item files, both roles in one process.

    python bench/psi_openmined.py A.txt B.txt cardinality|intersection

A.txt is the client's (receiver's) items, B.txt the server's (sender's), one per line. Prints
one JSON line: wall time of the whole exchange (setup, request, response, result), the bytes of
each protobuf message, the result, and the peak RSS of this process. Exact mode: the server's
setup uses the RAW data structure (no Bloom filter or GCS false positives), like cleanroom.
"""

import json
import resource
import sys
import time

import private_set_intersection.python as psi


def load(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    a_path, b_path, protocol = sys.argv[1], sys.argv[2], sys.argv[3]
    client_items, server_items = load(a_path), load(b_path)
    reveal = protocol == "intersection"
    cpu0 = cpu()
    t0 = time.perf_counter()
    client = psi.client.CreateWithNewKey(reveal)
    server = psi.server.CreateWithNewKey(reveal)
    setup = server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.RAW)
    request = client.CreateRequest(client_items)
    response = server.ProcessRequest(request)
    if reveal:
        result = len(client.GetIntersection(setup, response))
    else:
        result = client.GetIntersectionSize(setup, response)
    wall = time.perf_counter() - t0
    sizes = {
        "setup": len(setup.SerializeToString()),
        "request": len(request.SerializeToString()),
        "response": len(response.SerializeToString()),
    }
    print(json.dumps({
        "protocol": protocol,
        "wall_seconds": wall,
        "result": result,
        "bytes": sizes,
        "bytes_total": sum(sizes.values()),
        "cpu_seconds": cpu() - cpu0,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))


if __name__ == "__main__":
    main()
