package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// DefaultListen is the API's default address: loopback only, reached from
// the control plane through the SSH tunnel's reverse forward.
const DefaultListen = "127.0.0.1:8081"

// setupListenSecurity checks [api] listen, tls_cert/tls_key and the token
// before anything is opened: a non-loopback address needs TLS, and every
// address needs a token unless InsecureNoAuth (loopback, no TLS).
func (s *Server) setupListenSecurity() error {
	api := s.cfg.API
	if api.Listen == "" {
		s.cfg.API.Listen = DefaultListen
		api.Listen = DefaultListen
	}
	loopback, err := isLoopback(api.Listen)
	if err != nil {
		return err
	}
	switch {
	case (api.TLSCert == "") != (api.TLSKey == ""):
		return errors.New("[api] tls_cert and tls_key go together: set both (--tls-cert, --tls-key) or neither")
	case api.TLSCert != "":
		cert, err := tls.LoadX509KeyPair(api.TLSCert, api.TLSKey)
		if err != nil {
			return fmt.Errorf("[api] tls_cert %s and tls_key %s: %w", api.TLSCert, api.TLSKey, err)
		}
		s.tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	case !loopback:
		return fmt.Errorf("[api] listen %s is not a loopback address: serving other hosts needs TLS ([api] tls_cert and tls_key, --tls-cert, --tls-key); the control plane reaches a loopback listener through the SSH tunnel", api.Listen)
	}
	if s.opts.InsecureNoAuth {
		if !loopback || s.tlsCfg != nil {
			return fmt.Errorf("--insecure-no-auth is only allowed on a loopback address without TLS, not on %s: set [api] token_file", api.Listen)
		}
		s.log.Warn("serving WITHOUT authentication (--insecure-no-auth): any local user can start and cancel backups", "listen", api.Listen)
		return nil
	}
	s.token, err = readToken(api.TokenFile, s.log)
	return err
}

// isLoopback reports whether every address listen binds to is a loopback
// one. An empty or unspecified host (":8081", "0.0.0.0:8081") is not; a
// host name must resolve to loopback addresses only.
func isLoopback(listen string) (bool, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return false, fmt.Errorf("[api] listen %q: want HOST:PORT, e.g. %s: %v", listen, DefaultListen, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return false, fmt.Errorf("[api] listen %q: bad port: %v", listen, err)
	}
	if host == "" {
		return false, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false, fmt.Errorf("[api] listen %q: %w", listen, err)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return false, nil
		}
	}
	return len(addrs) > 0, nil
}

// Listen opens the [api] listen address. The bound address is checked
// again: a host name must not have resolved elsewhere meanwhile.
func (s *Server) Listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", s.cfg.API.Listen)
	if err != nil {
		return nil, fmt.Errorf("[api] listen %s: %w", s.cfg.API.Listen, err)
	}
	if s.tlsCfg == nil {
		if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
			ln.Close()
			return nil, fmt.Errorf("[api] listen %s bound %s, not a loopback address: configure TLS ([api] tls_cert, tls_key)", s.cfg.API.Listen, ln.Addr())
		}
	}
	return ln, nil
}
