# syntax=docker/dockerfile:1
# The refund-service image: a release build on Debian bookworm, run on distroless (no shell, no
# package manager) as the nonroot user (65532). Build it with BuildKit (docker buildx build, or
# any builder that reads this file); the Helm chart in helm/refund-service runs it.
#
#   docker build -t refund-service:0.1.0 .

FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads: the manifest and lock file, the build script and its protos, the
# sources. Examples and tests are not built.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin refund-service \
    && cp target/release/refund-service /refund-service

# glibc and libgcc, which the binary links; TLS is rustls, so no OpenSSL.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /refund-service /refund-service
# The service binds loopback unless told otherwise; in a container it must listen on all
# interfaces. (On a non-loopback address no admin key is made up: give REFUND_BOOTSTRAP_API_KEY
# or run `refund-service keys create`.) The default SQLite file lands in the working directory.
ENV REFUND_GRPC_ADDR=0.0.0.0:50051 \
    REFUND_HTTP_ADDR=0.0.0.0:8080
WORKDIR /home/nonroot
USER nonroot
# gRPC, and HTTP (/healthz, /readyz, /metrics, /webhooks/{provider}).
EXPOSE 50051 8080
ENTRYPOINT ["/refund-service"]
CMD ["serve"]
