# dicomsvc: the service on port 8001 as a non-root user.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DICOMSVC_DATA_DIR=/data \
    DICOMSVC_IMPORT_ROOT=/import \
    DICOMSVC_HOST=0.0.0.0 \
    DICOMSVC_PORT=8001

RUN groupadd --system --gid 10001 dicomsvc \
    && useradd --system --uid 10001 --gid dicomsvc --home-dir /app --no-create-home dicomsvc

WORKDIR /app
COPY pyproject.toml README.md app.py ./
COPY dicomsvc ./dicomsvc
# A plain install: the schema ships inside the package (dicomsvc/storage/schema.sql). EXTRAS adds
# optional dependencies: "[postgres,s3]" for the replicas of docker-compose's scale profile.
ARG EXTRAS=""
RUN pip install ".${EXTRAS}" \
    && mkdir -p /data /import \
    && chown dicomsvc:dicomsvc /data

USER dicomsvc
EXPOSE 8001 11112
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2).status != 200)"]
CMD ["dicomsvc", "serve"]
