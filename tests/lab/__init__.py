"""The real lab: podman VSNs, a Host container, a second host over SSH, an S3 server, an SMTP sink."""
