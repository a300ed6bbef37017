# tiergate: OpenAI-compatible LLM proxy.
#   docker build -t tiergate .                            # runtime + providers (litellm: anthropic/, bedrock/, ...)
#   docker build --build-arg PROVIDERS=no -t tiergate:lean .   # runtime only, ~300 MB smaller: OpenAI-wire and
#                                                         # simulated deployments (an anthropic/ one is refused)
#   docker run -p 4000:4000 tiergate                      # demo policy, simulated providers, no keys
#   docker run -p 4000:4000 -e OPENAI_API_KEY -e ANTHROPIC_API_KEY -e TIERGATE_ADMIN_KEY -e TIERGATE_KEY_APP \
#     -v $PWD/configs:/app/configs:ro tiergate serve --config configs/default.yaml --host 0.0.0.0 --port 4000
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Runtime dependencies (hash-pinned; training and test tools are in requirements-train/-dev.lock), first, so code
# changes do not rebuild this layer. The providers layer (litellm) is in by default: configs/default.yaml, the
# production example above, has an anthropic/ deployment, which only litellm serves.
ARG PROVIDERS=yes
COPY requirements.lock requirements-providers.lock ./
RUN if [ "$PROVIDERS" = yes ]; then providers="-r requirements-providers.lock"; else providers=""; fi \
    && pip install --no-cache-dir --require-hashes -r requirements.lock $providers

COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY pipeline ./pipeline
COPY router ./router
COPY upstream ./upstream
COPY kvcache ./kvcache
COPY classifiers ./classifiers
COPY metering ./metering
COPY simulator ./simulator
COPY text ./text
COPY wire ./wire
COPY configs ./configs
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --home-dir /app tiergate \
    && mkdir -p /app/var \
    && chown -R tiergate /app/var

USER tiergate
EXPOSE 4000

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:4000/healthz', timeout=2).status != 200)"]

ENTRYPOINT ["tiergate"]
CMD ["serve", "--config", "configs/demo.yaml", "--host", "0.0.0.0", "--port", "4000"]
