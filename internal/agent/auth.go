package agent

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// minTokenLength keeps guessable tokens out ("openssl rand -hex 32" gives 64).
const minTokenLength = 16

// tokenAuth checks the bearer token. It keeps only the token's SHA-256
// and compares digests in constant time, so neither the token's content
// nor its length leaks through timing.
type tokenAuth struct {
	sum      [sha256.Size]byte
	lastWarn atomic.Int64 // unix nanoseconds of the last logged refusal
	log      *slog.Logger
}

// readToken reads [api] token_file: its first line, surrounding blanks
// trimmed. The token itself never appears in errors or logs.
func readToken(path string, log *slog.Logger) (*tokenAuth, error) {
	if path == "" {
		return nil, errors.New("no API token: set [api] token_file (--token-file) to a file holding the bearer token clients send, e.g. created with 'openssl rand -hex 32 > token; chmod 600 token' (--insecure-no-auth serves a loopback address without one)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("[api] token_file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	tok := strings.TrimSpace(line)
	switch {
	case tok == "":
		return nil, fmt.Errorf("[api] token_file %s is empty", path)
	case len(tok) < minTokenLength:
		return nil, fmt.Errorf("[api] token_file %s: the token is shorter than %d characters; make a longer one (openssl rand -hex 32)", path, minTokenLength)
	case strings.ContainsAny(tok, " \t"):
		return nil, fmt.Errorf("[api] token_file %s: the token contains blanks", path)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("the API token file is readable by other users: chmod 600 it", "file", path, "mode", st.Mode().Perm().String())
	}
	return &tokenAuth{sum: sha256.Sum256([]byte(tok)), log: log}, nil
}

// ok reports whether r carries the token ("Authorization: Bearer TOKEN").
func (a *tokenAuth) ok(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, tok, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(sum[:], a.sum[:]) == 1
}

// middleware answers 401 to requests without the token. Refusals are
// logged at most once per 10 seconds (never with the header's content).
func (a *tokenAuth) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.ok(r) {
			next.ServeHTTP(w, r)
			return
		}
		now := time.Now().UnixNano()
		if last := a.lastWarn.Load(); now-last > int64(10*time.Second) && a.lastWarn.CompareAndSwap(last, now) {
			a.log.Warn("API request refused: missing or wrong bearer token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="sendense"`)
		detail := "send the token of [api] token_file as 'Authorization: Bearer TOKEN'"
		if r.Header.Get("Authorization") != "" {
			detail = "the bearer token is wrong; it is the content of [api] token_file"
		}
		writeError(w, &apiError{Status: http.StatusUnauthorized, Message: "unauthorized", Detail: detail})
	})
}
