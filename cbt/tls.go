package cbt

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Errors that Connect wraps, so that callers can tell the cases apart with
// errors.Is.
var (
	ErrThumbprint    = errors.New("certificate thumbprint mismatch")
	ErrUntrusted     = errors.New("server certificate is not trusted")
	ErrLogin         = errors.New("login failed")
	ErrUnreachable   = errors.New("server unreachable")
	ErrNotFound      = errors.New("not found")
	ErrAmbiguous     = errors.New("ambiguous")
	ErrNotSupported  = errors.New("not supported")
	ErrSessionFailed = errors.New("session lost")
)

// TLSError describes a refused server certificate.
type TLSError struct {
	Host     string // host:port
	Expected string // the thumbprint asked for, if any
	SHA1     string // the SHA-1 thumbprint of the certificate the server presented
	Reason   string // why it was refused
	kind     error
}

func (e *TLSError) Error() string {
	if e.kind == ErrThumbprint {
		return fmt.Sprintf("certificate thumbprint mismatch for %s: expected %s, the server presented %s", e.Host, e.Expected, e.SHA1)
	}
	return fmt.Sprintf("the certificate of %s is not trusted (%s; its SHA-1 thumbprint is %s): set its thumbprint or a CA file, or explicitly allow an insecure connection", e.Host, e.Reason, e.SHA1)
}

func (e *TLSError) Unwrap() error { return e.kind }

// Thumbprint returns the SHA-1 thumbprint of a certificate in vSphere's
// form: upper-case hex bytes separated by colons.
func Thumbprint(cert *x509.Certificate) string { return colonHex(sha1Sum(cert.Raw)) }

func sha1Sum(b []byte) []byte   { s := sha1.Sum(b); return s[:] }
func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02X", c)
	}
	return strings.Join(parts, ":")
}

// parseThumbprint accepts a SHA-1 (or SHA-256) thumbprint as hex, with or
// without colons, in either case, and returns its bytes.
func parseThumbprint(s string) ([]byte, error) {
	clean := strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s))
	b, err := hex.DecodeString(clean)
	if err != nil || (len(b) != sha1.Size && len(b) != sha256.Size) {
		return nil, fmt.Errorf("invalid thumbprint %q: want the SHA-1 fingerprint of the server certificate as 20 hex bytes separated by colons", s)
	}
	return b, nil
}

// verifier checks the server certificate as Config asks.
type verifier struct {
	host     string // host:port, for messages
	name     string // host name or IP, for chain verification
	pin      []byte // thumbprint (SHA-1 or SHA-256), nil when not pinned
	pinText  string
	roots    *x509.CertPool // CA file, nil when none
	insecure bool
}

func newVerifier(cfg Config, host, name string) (*verifier, error) {
	v := &verifier{host: host, name: name, insecure: cfg.Insecure}
	if cfg.Thumbprint != "" {
		pin, err := parseThumbprint(cfg.Thumbprint)
		if err != nil {
			return nil, err
		}
		v.pin, v.pinText = pin, colonHex(pin)
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		v.roots = x509.NewCertPool()
		if !v.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	return v, nil
}

// tlsConfig returns a client configuration that does all verification in
// VerifyConnection, so that errors carry what we know about the certificate.
func (v *verifier) tlsConfig() *tls.Config {
	return &tls.Config{
		InsecureSkipVerify: true, // verified in VerifyConnection
		VerifyConnection:   v.verify,
		MinVersion:         tls.VersionTLS12,
	}
}

func (v *verifier) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &TLSError{Host: v.host, Reason: "no certificate", kind: ErrUntrusted}
	}
	leaf := cs.PeerCertificates[0]
	actual := Thumbprint(leaf)
	if v.pin != nil {
		var sum []byte
		if len(v.pin) == sha1.Size {
			sum = sha1Sum(leaf.Raw)
		} else {
			sum = sha256Sum(leaf.Raw)
		}
		if string(sum) != string(v.pin) {
			return &TLSError{Host: v.host, Expected: v.pinText, SHA1: actual, kind: ErrThumbprint}
		}
	}
	if v.roots == nil && (v.pin != nil || v.insecure) {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, DNSName: v.name})
	if err != nil {
		return &TLSError{Host: v.host, SHA1: actual, Reason: err.Error(), kind: ErrUntrusted}
	}
	return nil
}
