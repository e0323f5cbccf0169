package agent

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sendense/capture/internal/config"
	"github.com/sendense/capture/orchestrator"
)

// authz decides which repositories and replication targets API requests
// may name: an authenticated caller is not trusted to choose where data
// goes or whom the agent connects to. Allowed are [repository] path and
// the [api] allowed_repositories / allowed_targets entries; an ssh://
// location must moreover be on the [tunnel] endpoint (the agent's key
// goes nowhere else). Everything is decided on the request's text, before
// any file, directory or connection is touched.
type authz struct {
	defaultRepo string // canonical [repository] path ("" if none)
	repos       []allowed
	targets     []allowed
	tunnel      string // "user@host:port" of [tunnel] ("" if no host)
}

// allowed is one allow-list entry: a canonical location, or with wild the
// canonical parent under which one more name is allowed ("…/*").
type allowed struct {
	loc  string
	wild bool
}

func (a allowed) match(canon string) bool {
	if !a.wild {
		return canon == a.loc
	}
	rest, ok := strings.CutPrefix(canon, a.loc+"/")
	return ok && rest != "" && !strings.ContainsAny(rest, "/?#") && !strings.HasPrefix(rest, ".")
}

// newAuthz checks the allow lists of cfg (configuration errors name the
// key and the entry).
func newAuthz(cfg *config.Config) (*authz, error) {
	a := &authz{}
	t := cfg.Tunnel
	if t.Host != "" {
		a.tunnel = fmt.Sprintf("%s@%s:%d", t.User, strings.ToLower(t.Host), t.Port)
	}
	if p := cfg.Repository.Path; p != "" {
		if !orchestrator.IsRemoteRepository(p) {
			p, _ = filepath.Abs(p) // as the jobs will open it
		}
		canon, err := a.canonRepo(cfg, p)
		if err != nil {
			return nil, fmt.Errorf("[repository] path: %w", err)
		}
		a.defaultRepo = canon
	}
	for _, e := range cfg.API.AllowedRepositories {
		al, err := parseAllowed(e, func(s string) (string, error) { return a.canonRepo(cfg, s) })
		if err != nil {
			return nil, fmt.Errorf("[api] allowed_repositories: %q: %w", e, err)
		}
		a.repos = append(a.repos, al)
	}
	for _, e := range cfg.API.AllowedTargets {
		if strings.HasPrefix(e, "nbd+unix:") || strings.HasPrefix(e, "nbds+unix:") {
			if strings.Contains(e, "*") {
				return nil, fmt.Errorf("[api] allowed_targets: %q: a unix socket target is allowed only exactly (no *)", e)
			}
		}
		al, err := parseAllowed(e, func(s string) (string, error) { return a.canonTarget(cfg, s) })
		if err != nil {
			return nil, fmt.Errorf("[api] allowed_targets: %q: %w", e, err)
		}
		a.targets = append(a.targets, al)
	}
	return a, nil
}

// parseAllowed reads an entry: a location, or "LOCATION/*".
func parseAllowed(e string, canon func(string) (string, error)) (allowed, error) {
	base, wild := strings.CutSuffix(e, "/*")
	if strings.Contains(base, "*") {
		return allowed{}, fmt.Errorf(`"*" is allowed only as the last path element ("/srv/backups/*")`)
	}
	c, err := canon(base)
	if err != nil {
		return allowed{}, err
	}
	return allowed{loc: c, wild: wild}, nil
}

// canonRepo is a repository location in one spelling: a clean absolute
// path, or ssh://USER@HOST:PORT/PATH with [tunnel]'s user and port filled
// in and the host in lower case.
func (a *authz) canonRepo(cfg *config.Config, loc string) (string, error) {
	if !orchestrator.IsRemoteRepository(loc) {
		if !filepath.IsAbs(loc) {
			return "", fmt.Errorf("%q is not an absolute path or ssh://[user@]host[:port]/path", loc)
		}
		return filepath.Clean(loc), nil
	}
	u, err := orchestrator.ParseRepositoryURL(loc)
	if err != nil {
		return "", err
	}
	ep, err := sshEndpoint(cfg, u)
	if err != nil {
		return "", err
	}
	return "ssh://" + ep + path.Clean(u.Path), nil
}

// canonTarget is a replication target in one spelling.
func (a *authz) canonTarget(cfg *config.Config, uri string) (string, error) {
	u, err := orchestrator.ParseTargetURI(uri)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "ssh":
		ep, err := sshEndpoint(cfg, u)
		if err != nil {
			return "", err
		}
		return "ssh://" + ep + path.Clean(u.Path), nil
	case "nbd+unix", "nbds+unix":
		q := u.Query()
		q.Set("socket", filepath.Clean(q.Get("socket")))
		return u.Scheme + "://" + u.Path + "?" + q.Encode(), nil
	}
	port := u.Port()
	if port == "" {
		port = "10809"
	}
	c := u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port) + u.EscapedPath()
	if u.RawQuery != "" {
		c += "?" + u.Query().Encode()
	}
	return c, nil
}

// sshEndpoint is "user@host:port" of an ssh:// URL as the tunnel would
// dial it ([tunnel] user and port fill what the URL leaves out).
func sshEndpoint(cfg *config.Config, u *url.URL) (string, error) {
	user, port := cfg.Tunnel.User, cfg.Tunnel.Port
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}
	if _, set := u.User.Password(); u.User != nil && set {
		return "", fmt.Errorf("passwords in ssh:// URLs are not supported")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("bad port %q", p)
		}
		port = n
	}
	return fmt.Sprintf("%s@%s:%d", user, strings.ToLower(u.Hostname()), port), nil
}

// repository checks a repository named by a request (what names the field
// or parameter): 400 when malformed, 403 when not allowed.
func (a *authz) repository(cfg *config.Config, loc, what string) *apiError {
	if aerr := checkRepoLocation(loc, what); aerr != nil {
		return aerr
	}
	canon, err := a.canonRepo(cfg, loc)
	if err != nil {
		return errorf(http.StatusBadRequest, what, "%v", err)
	}
	if canon == a.defaultRepo {
		return nil
	}
	ok := false
	for _, al := range a.repos {
		ok = ok || al.match(canon)
	}
	if !ok {
		return errorf(http.StatusForbidden, "repository not allowed: "+loc,
			"API jobs may use [repository] path (%s) and the repositories listed in [api] allowed_repositories; %s is not listed there: add it to the agent's configuration to allow it", orDefault(a.defaultRepo, "not set"), loc)
	}
	return a.sshAllowed(canon, "repository", loc)
}

// target checks a replication target named by a request: 403 when not
// in [api] allowed_targets (it was parsed already).
func (a *authz) target(cfg *config.Config, uri, field string) *apiError {
	canon, err := a.canonTarget(cfg, uri)
	if err != nil {
		return errorf(http.StatusBadRequest, fmt.Sprintf("invalid field %q", field), "%v", err)
	}
	ok := false
	for _, al := range a.targets {
		ok = ok || al.match(canon)
	}
	if !ok {
		return errorf(http.StatusForbidden, "target not allowed: "+uri,
			"API jobs may replicate only into the targets listed in [api] allowed_targets (none by default); %s is not listed there: add it to the agent's configuration to allow it", uri)
	}
	return a.sshAllowed(canon, "target", uri)
}

// sshAllowed refuses an ssh:// location that is not on the [tunnel]
// endpoint, even when listed.
func (a *authz) sshAllowed(canon, what, loc string) *apiError {
	rest, ok := strings.CutPrefix(canon, "ssh://")
	if !ok {
		return nil
	}
	if a.tunnel == "" {
		return errorf(http.StatusForbidden, what+" not allowed: "+loc,
			"ssh:// %ss are reached through the SSH tunnel, and [tunnel] host is not set", what)
	}
	if !strings.HasPrefix(rest, a.tunnel+"/") {
		return errorf(http.StatusForbidden, what+" not allowed: "+loc,
			"ssh:// %ss must be on the [tunnel] endpoint %s ([tunnel] user, host and port): the agent's SSH key goes nowhere else", what, a.tunnel)
	}
	return nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
