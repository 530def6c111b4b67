# syntax=docker/dockerfile:1
#
# hybrid in a container: a static binary (CGO_ENABLED=0) on distroless, run
# as a non-root user. Build it with the version and commit from git (the
# build context has no .git: see .dockerignore), as `make docker` does:
#
#   docker build -t hybrid \
#     --build-arg VERSION="$(git describe --tags --always --dirty)" \
#     --build-arg COMMIT="$(git rev-parse HEAD)" .
#
# Run a role with its config mounted where it is read by default
# (/etc/hybrid/hybrid.yaml, the working directory):
#
#   docker run --rm -v "$PWD/relay.yaml:/etc/hybrid/hybrid.yaml:ro" \
#     -p 5671:5671 -p 9352:9352 -p 443:8443 hybrid relay
#
# Without a mounted config it runs the built-in demo, which listens on the
# container's own loopback only.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/hybridconn/hybrid/internal/buildinfo.Version=${VERSION} -X github.com/hybridconn/hybrid/internal/buildinfo.Commit=${COMMIT}" \
      -o /out/hybrid ./cmd/hybrid

# distroless/static: CA certificates, /etc/passwd with the nonroot user
# (65532), tzdata; no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/hybrid /usr/local/bin/hybrid
WORKDIR /etc/hybrid
USER nonroot:nonroot
# The relay's default ports: control, data, http (WebSocket fallback,
# /healthz, /metrics, /status).
EXPOSE 5671 9352 8080
ENTRYPOINT ["/usr/local/bin/hybrid"]
CMD ["--help"]
