#!/bin/sh
# What both images' build stages take out of the installed environment (/opt/autolabel) before the
# runtime stage copies it: nothing here is used to run. Each cut was checked with the compose run
# (tests/test_compose.py: a real detection, S3 through botocore, the CLI); docs/deploy.md has the sizes.
set -eu
site=$(echo "$1"/lib/python3.*/site-packages)

# Test suites, and torch's C++ headers (for building extensions against torch).
rm -rf "$site"/*/tests "$site"/torch/test "$site"/torch/include

# botocore's API models for every AWS service (28 MB): the product talks to S3, and STS is what a
# role taken by web identity (a Kubernetes service account) asks. The endpoint, partition, retry and
# default-configuration files at the top of data/ stay: every client reads them.
find "$site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts -exec rm -rf {} +

# Symbol tables and debug sections of the extension modules and torch's libraries (mmcv's ops: 83 MB
# -> 2 MB; libtorch_cpu: 434 -> 345 MB); the dynamic symbols they link by stay. The libraries
# auditwheel vendored into *.libs/ are left as they are: their builds stripped them already, and
# patchelf rewrote them.
find "$site" -name '*.so*' -type f ! -path '*.libs/*' -exec strip --strip-unneeded {} +
