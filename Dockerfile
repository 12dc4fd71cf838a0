# syntax=docker/dockerfile:1.7
#
# One builder stage compiles every binary; one minimal runtime target per service:
#   docker build --target gateway            -t ghcr.io/cpis/gateway:0.1.0 .
#   docker build --target flag-service       -t ghcr.io/cpis/flag-service:0.1.0 .
#   docker build --target attendance-service -t ghcr.io/cpis/attendance-service:0.1.0 .
#   docker build --target access-service     -t ghcr.io/cpis/access-service:0.1.0 .
#   docker build --target cli                -t ghcr.io/cpis/cpis:0.1.0 .
# (BuildKit builds the shared builder stage once for all of them.) The runtime images are
# distroless: no shell, no package manager, user nonroot (65532). Kubernetes probes them over
# gRPC on the health port, so they carry no HEALTHCHECK (k8s/checkov-skips.txt).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The proto crate vendors protoc, so no system protobuf compiler is installed.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p gateway -p flag-service -p attendance-service -p access-service -p cpis-cli \
    && mkdir -p /out \
    && cp target/release/gateway target/release/flag-service target/release/attendance-service \
          target/release/access-service target/release/cpis /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=builder /out/gateway /usr/local/bin/gateway
USER 65532:65532
# gRPC (TLS), plaintext gRPC health for kubelet probes, Prometheus metrics.
EXPOSE 50051 8080 9464
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM gcr.io/distroless/cc-debian12:nonroot AS flag-service
COPY --from=builder /out/flag-service /usr/local/bin/flag-service
USER 65532:65532
EXPOSE 50051 8080 9464
ENTRYPOINT ["/usr/local/bin/flag-service"]

FROM gcr.io/distroless/cc-debian12:nonroot AS attendance-service
COPY --from=builder /out/attendance-service /usr/local/bin/attendance-service
USER 65532:65532
EXPOSE 50051 8080 9464
ENTRYPOINT ["/usr/local/bin/attendance-service"]

FROM gcr.io/distroless/cc-debian12:nonroot AS access-service
COPY --from=builder /out/access-service /usr/local/bin/access-service
USER 65532:65532
EXPOSE 50051 8080 9464
ENTRYPOINT ["/usr/local/bin/access-service"]

# The `cpis` command line (administration, uploads, tokens); not deployed as a service.
FROM gcr.io/distroless/cc-debian12:nonroot AS cli
COPY --from=builder /out/cpis /usr/local/bin/cpis
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cpis"]
