"""From finished runs to findings: shard files, merged results, statistics, the report.

* ``shards``   -- one Parquet row per run, written atomically (the run side writes them)
* ``merge``    -- shards -> results.parquet, predictions -> predictions.parquet (checked, quarantined, locked)
* ``summary``  -- the mean-accuracy tables ``pipeline run`` / ``summary`` print
* ``stats``    -- paired comparisons: hierarchical bootstrap, McNemar, Wilcoxon, Holm
* ``report``   -- ``pipeline report``: load a sweep, compare, write report/ (uses the modules below)
* ``tables``   -- the report's tables (cells, retention, class balance, did-it-learn, hosts)
* ``figures``  -- the report's figures (matplotlib, no pyplot)
* ``sections`` -- the report's sections as prose and tables; ``prose`` -- its generated summary paragraph
* ``document`` -- a tiny document model rendered to Markdown and self-contained HTML

Nothing here imports torch.
"""
