# apilb container image: one statically linked binary and nothing else, run as a non-root
# user. No base image is pulled (FROM scratch), so the binary is built outside Docker first;
# scripts/build-image does both steps:
#
#   RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu --bin apilb
#   docker build -t apilb:0.1.0 .
#
# The image has no shell, no CA store and no /etc files of its own: apilb verifies the
# apiservers against the cluster CA it is given (--ca-file, mounted from the node), and the
# kubelet provides /etc/hosts and /etc/resolv.conf to the pod.
FROM scratch

ARG BINARY=target/x86_64-unknown-linux-gnu/release/apilb
COPY ${BINARY} /usr/local/bin/apilb

# 65532: the "nonroot" uid/gid of distroless images; the static pod sets the same.
USER 65532:65532

LABEL org.opencontainers.image.title="apilb" \
      org.opencontainers.image.description="Node-local load balancer for the Kubernetes API server" \
      org.opencontainers.image.licenses="Apache-2.0"

ENTRYPOINT ["/usr/local/bin/apilb"]
CMD ["--help"]
