"""MIG, the Mach Interface Generator, per target."""
