#!/usr/bin/env bash
# The release .wasm as the OCI image that Istio's WasmPlugin and Envoy Gateway's
# EnvoyExtensionPolicy pull (the format, and why this one: docs/releasing.md).
#
#   tools/oci_image.sh build <otp_filter.wasm> <version> <out.oci.tar>
#       an oci-archive holding one image: one gzip layer with /plugin.wasm. Prints its digest.
#   tools/oci_image.sh digest <archive.oci.tar>
#       the image digest (sha256:<hex>): the sha256 of its manifest, what a registry serves.
#   tools/oci_image.sh push <archive.oci.tar> <registry>/<repository>:<tag>
#       copies the image byte for byte, checks the registry serves the same digest, and prints the
#       by-digest reference to deploy. OCI_TLS_VERIFY=false allows a plain-HTTP registry (tests).
#
# Tools: Debian's buildah and skopeo (bookworm: 1.28.2 and 1.9.3). The digest depends only on the
# .wasm bytes and these tools' versions (timestamps are fixed at 0), so never hard-code it.
set -euo pipefail

die() { echo "oci_image.sh: $*" >&2; exit 1; }

digest() {
  local archive=$1
  [[ -f $archive ]] || die "no such archive: $archive"
  command -v skopeo >/dev/null || die "skopeo is missing (apt-get install buildah skopeo)"
  echo "sha256:$(skopeo inspect --raw "oci-archive:$archive" | sha256sum | cut -d' ' -f1)"
}

build() {
  local wasm=$1 version=$2 out=$3
  [[ -f $wasm ]] || die "no such file: $wasm (run make build)"
  # The Wasm magic number, as Istio's fetcher checks it: never package something else.
  [[ $(head -c 4 "$wasm" | od -An -tx1 | tr -d ' \n') == 0061736d ]] || die "$wasm is not a Wasm module"
  command -v buildah >/dev/null || die "buildah is missing (apt-get install buildah skopeo)"

  local scratch
  scratch=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: $scratch is local
  trap "rm -rf '$scratch'" EXIT
  # A private, throwaway containers-storage: no image is stored in /var/lib/containers, and the vfs
  # driver works as root inside a container, where overlay mounts are refused. Nothing is RUN in
  # the image, so no isolation or runtime is needed.
  local b=(buildah --root "$scratch/root" --runroot "$scratch/run" --storage-driver vfs)
  local ctr
  ctr=$("${b[@]}" from --quiet scratch)
  "${b[@]}" copy --quiet --chmod 0644 "$ctr" "$wasm" /plugin.wasm
  # Manifest annotations. module.wasm.image/variant=compat marks the "compat" Wasm image variant.
  "${b[@]}" config \
    --annotation module.wasm.image/variant=compat \
    --annotation org.opencontainers.image.title=otp-filter \
    --annotation "org.opencontainers.image.version=$version" \
    --annotation org.opencontainers.image.licenses=Apache-2.0 \
    "$ctr"
  # --timestamp 0: the layer's file times and the config's "created" are fixed, so the digest is
  # reproducible. No history or builder label: the config then describes the content only.
  "${b[@]}" commit --quiet --format oci --timestamp 0 --omit-history --identity-label=false \
    "$ctr" "otp-filter:$version" >/dev/null
  mkdir -p "$(dirname "$out")"
  rm -f "$out"
  # gzip, explicitly: Istio and Envoy Gateway accept application/vnd.oci.image.layer.v1.tar+gzip,
  # not an uncompressed or zstd layer.
  "${b[@]}" push --quiet --compression-format gzip --digestfile "$scratch/digest" \
    "otp-filter:$version" "oci-archive:$out:$version"
  local got
  got=$(digest "$out")
  [[ $got == "$(cat "$scratch/digest")" ]] || die "buildah reported $(cat "$scratch/digest"), the archive holds $got"
  echo "$got"
}

push() {
  local archive=$1 dest=$2
  # A tag is required: the part after the last colon must not hold a slash (that is a port).
  [[ $dest == */*:* && ${dest##*:} != */* ]] || die "destination must be <registry>/<repository>:<tag>, got $dest"
  local tls=${OCI_TLS_VERIFY:-true} want got
  want=$(digest "$archive")
  # --preserve-digests: fail rather than let skopeo recompress or convert, which would change the
  # digest that the manifests pin.
  skopeo copy --quiet --preserve-digests --dest-tls-verify="$tls" "oci-archive:$archive" "docker://$dest"
  got="sha256:$(skopeo inspect --raw --tls-verify="$tls" "docker://$dest" | sha256sum | cut -d' ' -f1)"
  [[ $got == "$want" ]] || die "the registry serves $got for $dest, the archive holds $want"
  echo "${dest%:*}@$want"
}

case ${1:-} in
  build) [[ $# -eq 4 ]] || die "usage: build <otp_filter.wasm> <version> <out.oci.tar>"; build "$2" "$3" "$4" ;;
  digest) [[ $# -eq 2 ]] || die "usage: digest <archive.oci.tar>"; digest "$2" ;;
  push) [[ $# -eq 3 ]] || die "usage: push <archive.oci.tar> <registry>/<repository>:<tag>"; push "$2" "$3" ;;
  *) die "usage: oci_image.sh build|digest|push ..." ;;
esac
