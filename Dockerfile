# fluxauth standalone proxy. Mount the store (or point FLUXAUTH_STORE at it) and
# set FLUXAUTH_UPSTREAM; manage keys with `docker exec ... fluxauth keys ...`.
FROM python:3.11-slim
RUN useradd --system --home /var/lib/fluxauth --create-home fluxauth
WORKDIR /opt/fluxauth
COPY pyproject.toml README.md ./
COPY fluxauth ./fluxauth
RUN pip install --no-cache-dir . && rm -rf /root/.cache
USER fluxauth
ENV FLUXAUTH_STORE=sqlite:////var/lib/fluxauth/fluxauth.db
VOLUME ["/var/lib/fluxauth"]
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/_fluxauth/healthz')"
CMD ["fluxauth", "serve", "--host", "0.0.0.0", "--port", "8000"]
