package agent

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/sendense/capture/internal/config"
)

// keyRedactor replaces the path of the [tunnel] SSH key in API answers
// with the key's fingerprint: an answer (a job's error, a repository
// error) names the key, never where it lies. The log keeps the paths.
func keyRedactor(cfg *config.Config) *strings.Replacer {
	key := cfg.Tunnel.Key
	if key == "" {
		return nil
	}
	// The path as given and as the tunnel expands it; a bare file name
	// ("id") is left alone: replacing it would garble answers.
	paths := map[string]bool{}
	if strings.Contains(key, "/") {
		paths[key] = true
	}
	exp := key
	if strings.HasPrefix(key, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			exp = filepath.Join(home, key[2:])
			paths[exp] = true
		}
	}
	if abs, err := filepath.Abs(exp); err == nil {
		paths[abs] = true
	}
	name := "the [tunnel] key"
	if fp := keyFingerprint(key); fp != "" {
		name = "the [tunnel] key " + fp
	}
	var olds []string
	for p := range paths {
		olds = append(olds, p+".pub", p)
		if b, err := json.Marshal(p); err == nil { // as it appears in JSON
			q := string(b[1 : len(b)-1])
			olds = append(olds, q+".pub", q)
		}
	}
	sort.SliceStable(olds, func(a, b int) bool { return len(olds[a]) > len(olds[b]) }) // longest first
	var pairs []string
	for _, o := range olds {
		pairs = append(pairs, o, name)
	}
	return strings.NewReplacer(pairs...)
}

// keyFingerprint is the SHA-256 fingerprint of the key file's public key
// (from the key, else from KEY.pub), "" if neither can be read.
func keyFingerprint(key string) string {
	if strings.HasPrefix(key, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			key = filepath.Join(home, key[2:])
		}
	}
	if b, err := os.ReadFile(key); err == nil {
		if s, err := ssh.ParsePrivateKey(b); err == nil {
			return ssh.FingerprintSHA256(s.PublicKey())
		}
	}
	if b, err := os.ReadFile(key + ".pub"); err == nil {
		if pk, _, _, _, err := ssh.ParseAuthorizedKey(b); err == nil {
			return ssh.FingerprintSHA256(pk)
		}
	}
	return ""
}

// redactWriter applies a keyRedactor to what a handler writes (each
// answer is written at once by writeJSON).
type redactWriter struct {
	http.ResponseWriter
	r *strings.Replacer
}

func (w redactWriter) Write(p []byte) (int, error) {
	if _, err := w.ResponseWriter.Write([]byte(w.r.Replace(string(p)))); err != nil {
		return 0, err
	}
	return len(p), nil
}
