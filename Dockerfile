# sluice's container image. No Docker engine runs on the project's machines, so `scripts/package`
# builds exactly the file set this image copies, and tests/deploy.rs checks it.
#
#   docker build -t sluice .
#   docker run --rm -e SLUICE_CONFIG=s3://my-bucket/sluice.yaml sluice
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev zlib1g-dev pkg-config perl make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/package --out /out

FROM debian:bookworm-slim
COPY docker/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice --no-create-home sluice
COPY --from=build /out/rootfs/ /
RUN chown sluice:sluice /var/lib/sluice
USER 10001:10001
# state_dir (./sluice-state by default) lands here; mount a volume to keep Invoke API events and
# stream checkpoints across task replacements, or use a DynamoDB lease table.
WORKDIR /var/lib/sluice
ENV SLUICE_CONFIG=/etc/sluice/sluice.yaml
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["sluice", "health"]
ENTRYPOINT ["sluice"]
CMD ["run"]
