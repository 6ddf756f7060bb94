"""The corpus job beyond one process: shard planning (:mod:`mbias.scale.shards`), the worker that
holds one Debiaser (:mod:`mbias.scale.worker`) and the Ray Data job (:mod:`mbias.scale.ray_job`).

Ray is an optional extra (``pip install 'mbias[ray]'``); only ``ray_job`` and ``worker`` import it
and only when a job runs, so ``mbias`` without Ray loses nothing but ``--ray``.
"""
