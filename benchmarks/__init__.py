"""End-to-end benchmarks: FTP Pooler through Kafka against lftp, rclone and curl (`make bench`)."""
