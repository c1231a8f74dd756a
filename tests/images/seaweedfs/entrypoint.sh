#!/bin/sh
# One SeaweedFS server (master, volume, filer, S3 on $S3_PORT) with one identity whose
# keys come from the environment.
set -eu
: "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}" "${WEED_IP:?}"
mkdir -p /data /etc/seaweedfs
cat > /etc/seaweedfs/s3.json <<JSON
{"identities":[{"name":"site","credentials":[{"accessKey":"$S3_ACCESS_KEY","secretKey":"$S3_SECRET_KEY"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
exec weed server -dir=/data -ip="$WEED_IP" -ip.bind=0.0.0.0 -master.telemetry=false \
    -master.volumeSizeLimitMB=256 -volume.max=0 \
    -s3 -s3.port="${S3_PORT:-9000}" -s3.config=/etc/seaweedfs/s3.json -s3.port.iceberg=0 -s3.port.lance=0
