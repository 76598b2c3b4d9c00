"""Benchmark clearmount against rclone mount, s3fs and the SDKs' own downloads, side by side.

Run it through ``scripts/bench`` (which installs what it needs first, then runs
``python -m benchkit`` as root)::

    scripts/bench                      # S3 on SeaweedFS: clearmount, rclone mount, s3fs; 3 reps
    scripts/bench --quick              # 256 MiB, 200 small files, 1 000 entries, 1 rep
    scripts/bench --only clearmount    # skip the peers
    scripts/bench --rows cold,small    # only these rows (of cold, warm, ttfb, ls, small, torch,
                                       # mmap, mmap-state-dict, safetensors, dataloader, latency)
    scripts/bench --daemon-cpus 0 --rows dataloader   # mount processes under taskset -c 0
    scripts/bench --backend azure      # Azurite: clearmount vs azure-storage-blob
    scripts/bench --backend gcs        # fake-gcs-server: clearmount vs google-cloud-storage

One server on 127.0.0.1 is started and seeded once with what the selected rows read (one big
object, N small ones, M tiny ones in one "directory"; for the ML rows a torch checkpoint, a
model's state dict, a safetensors file, the DataLoader's sample files, built once under
.cache/bench/ml-data);
every repetition then measures the reference (the SDK, in this process or in a subprocess)
and each contender in one session per group of rows, each on a fresh mount with a fresh
cache, for instance:

- A: start -> ready; drop the page cache; cold sequential read of the big object (peak RSS of
  the mount process sampled meanwhile); warm re-read with dd.
- B: start -> ready; drop the page cache; stat the big object (lookups), then open + read 1 byte.
- C: start -> ready; drop the page cache; ``ls -l`` of the tiny objects twice; drop the page
  cache; read the small objects with 8 threads.
- torch, mmap, mmap-state-dict, safetensors, dataloader, latency (S3 only): one session
  each; torch's and safetensors' calls run in a ``mlwork`` process (``mlrun`` drives it);
  mmap, mmap-state-dict and safetensors each add a second mount that reaches the server
  through a counting proxy, for the bucket bytes (see each scenario's docstring).

Every byte a contender returns is checked (sha256, tensor sums, CRC32s). Prints a markdown
table of medians with each contender's ratio to the reference and writes it to ``--out``.
Exit codes: 0 done, whatever the speeds; 1 a contender returned wrong bytes (or an I/O error
instead of them); 2 the benchmark itself could not run.

Who owns what:

- ``cli``          the arguments and the orchestration (start, seed, run, report, exit code)
- ``sites/``       one module per backend: its server, the SDK calls that seed it and the
                   reference measurements (the SDK's own GET, listing and download)
- ``contenders/``  one module per contender: how to mount the bucket (clearmount, rclone, s3fs)
- ``scenarios/``   one module per ``--rows`` name: its table rows and how the reference and a
                   contender measure them (the "start" row is measured by every session)
- ``runner``       repetitions, fresh mount sessions, and what one scenario sees (``Visit``)
- ``report``       the markdown table, ratios and targets
- ``seed``         the data set; ``measure`` timed reads with sha256 checks; ``session`` a
                   mount process, its watchdog and profiler; ``machine`` page cache, /proc,
                   versions; ``results`` the samples; ``download`` the reference download's
                   own process; ``mlwork`` the ML rows' client process (imports torch) and
                   ``mlrun`` running it. The servers come from the ``devkit`` package
                   (repository root)
"""
