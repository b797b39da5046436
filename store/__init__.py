"""What fxopt keeps on disk, and the rules that keep a user's files safe.

Where a run may write and what it may replace (:mod:`.output_guard`), outputs staged and
renamed into place (:mod:`.staging`), the cache (:mod:`.root`, sealed :mod:`.entries`, finished
outputs by build key in :mod:`.outputs`), file hashes (:mod:`.hashes`) and the output's
``manifest.json`` (:mod:`.manifest`). Nothing here imports torch: the no-op rerun lives on it.
It depends on the engine only for its errors, console and report.
"""
