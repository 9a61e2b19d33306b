"""The X2Go services: the session broker X2Go clients ask (HTTP/HTTPS), and x2gobroker's load-checker socket."""
