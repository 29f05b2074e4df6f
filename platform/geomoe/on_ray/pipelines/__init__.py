"""Ray Data pipelines (Ray layer): prepare (shard pairs to Parquet). Later: refine, embed, caption."""
