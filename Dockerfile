# CPU images of every segtune binary. The CUDA trainer/evaluator stage is added with the
# engine's `cuda` feature (see the issues); compose.yaml selects the binary per service.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out && find target/release -maxdepth 1 -type f -executable -name 'segtune*' -exec cp {} /out/ \;

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
ENV SEGTUNE_STORE=/data/store SEGTUNE_NATS=nats://nats:4222
VOLUME /data
ENTRYPOINT []
