package agent

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
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
	b, err := readPrivateFile(path)
	if err != nil {
		return nil, err
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

// readPrivateFile reads the token file, refusing one that other users may
// read or that is not the agent's own: the token lets its holder start
// backups. The checks are made on the opened file.
func readPrivateFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("[api] token_file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("[api] token_file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("[api] token_file %s is not a regular file", path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("[api] token_file %s belongs to uid %d, not to the agent's user (uid %d): chown it to that user (chown %d %s) or run the agent as its owner", path, sys.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("[api] token_file %s is readable or writable by other users (mode %04o): chmod 600 %s", path, perm, path)
	}
	return io.ReadAll(io.LimitReader(f, 64<<10))
}
