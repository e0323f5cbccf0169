package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/sendense/capture/internal/qemu"
	"github.com/sendense/capture/internal/remote"
	"github.com/sendense/capture/internal/repo"
	"github.com/sendense/capture/internal/tunnel"
)

// Remote repositories: how long a backup may take to reconnect, and how
// long the remote side keeps its qemu-nbd servers and locks without
// hearing from the agent.
var (
	// reconnectTimeout bounds one reconnection attempt of a resumed copy
	// (redialing the tunnel, re-forwarding the qemu-nbd socket);
	// copyResumable spaces and counts the attempts.
	reconnectTimeout = 30 * time.Second
	// remoteGrace is remote.Options.Grace: a dropped connection must come
	// back within it, and an agent that died holds its locks that long.
	remoteGrace = remote.DefaultGrace
)

// IsRemoteRepository says whether location names a repository on another
// machine (ssh://…) rather than a directory here.
func IsRemoteRepository(location string) bool {
	return strings.HasPrefix(location, "ssh://")
}

// ParseRepositoryURL checks a remote repository location:
// ssh://[USER@]HOST[:PORT]/PATH, PATH absolute on that machine (or
// /~/DIR, relative to the remote home directory).
func ParseRepositoryURL(location string) (*url.URL, error) {
	u, err := url.Parse(location)
	if err != nil {
		return nil, fmt.Errorf("repository %q: %w", location, err)
	}
	if u.Scheme != "ssh" {
		return nil, fmt.Errorf("repository %q: unsupported scheme %q: use a directory or ssh://[user@]host[:port]/path", location, u.Scheme)
	}
	if u.Hostname() == "" || u.Path == "" || u.Path == "/" {
		return nil, fmt.Errorf("repository %q: ssh:// needs a host and the repository's path on it, e.g. ssh://sendense@cp.example.com/srv/backups", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("repository %q: ssh:// takes no query or fragment", u.Redacted())
	}
	return u, nil
}

// OpenRepository opens the repository at location: a directory on this
// machine, or ssh://[USER@]HOST[:PORT]/PATH on the control plane, reached
// through s's shared SSH tunnel ([tunnel] key, known_hosts…; the URL's
// user, host and port win). There qemu-img and qemu-nbd run over SSH
// sessions and files are read and written through SFTP; an unknown or
// changed host key, a refused user key, or missing QEMU tools on the
// remote side are errors saying what to do. Close the repository, then
// the services' tunnels (s.CloseTunnels), when done.
func OpenRepository(ctx context.Context, s *Services, location string) (*repo.Repo, error) {
	return openRepository(ctx, s, location, openOnly)
}

// OpenOrInitRepository is OpenRepository that creates the repository
// when its directory does not exist or is empty (what a backup does).
func OpenOrInitRepository(ctx context.Context, s *Services, location string) (*repo.Repo, error) {
	return openRepository(ctx, s, location, openOrInit)
}

// OpenOrInitEmptyRepository is OpenOrInitRepository that creates the
// repository only in a missing or truly empty directory: a directory
// holding anything, dot-files included, that is not a repository is
// refused. Jobs started through the agent's API use it.
func OpenOrInitEmptyRepository(ctx context.Context, s *Services, location string) (*repo.Repo, error) {
	return openRepository(ctx, s, location, openOrInitEmpty)
}

// openMode says whether openRepository may create the repository.
type openMode int

const (
	openOnly        openMode = iota
	openOrInit               // in a missing or empty directory (dot-files ignored)
	openOrInitEmpty          // in a missing or truly empty directory
)

func openRepository(ctx context.Context, s *Services, location string, mode openMode) (*repo.Repo, error) {
	create := mode != openOnly
	if !IsRemoteRepository(location) {
		if mode == openOrInitEmpty {
			if err := checkInitEmpty(repo.Local, location); err != nil {
				return nil, err
			}
		}
		if create {
			return repo.OpenOrInitFS(ctx, repo.Local, qemu.Default, location)
		}
		return repo.OpenContext(ctx, location)
	}
	u, err := ParseRepositoryURL(location)
	if err != nil {
		return nil, err
	}
	dial := func(ctx context.Context) (*tunnel.Tunnel, error) { return s.Tunnel(ctx, u) }
	h, err := remote.Open(ctx, dial, remote.Options{Grace: remoteGrace})
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", u.Redacted(), err)
	}
	tools := qemu.New(h)
	var r *repo.Repo
	if mode == openOrInitEmpty {
		if err := checkInitEmpty(h, u.Path); err != nil {
			h.Close()
			return nil, err
		}
	}
	if create {
		r, err = repo.OpenOrInitFS(ctx, h, tools, u.Path)
	} else {
		r, err = repo.OpenFS(ctx, h, tools, u.Path)
	}
	if err != nil {
		h.Close()
		return nil, err
	}
	return r, nil
}

// serverReconnector resumes a copy into a qemu-nbd of a remote
// repository: it re-forwards its socket through the tunnel (which
// s.Tunnel redials when it died). The server is the same process, kept
// alive on the remote side by its lease, so what it acknowledged before
// the loss is still there; it is never restarted (see qemu.Server.Reconnect).
func serverReconnector(srv *qemu.Server) Reconnector {
	return func(ctx context.Context) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, reconnectTimeout)
		defer cancel()
		return srv.Reconnect(ctx)
	}
}

// checkInitEmpty refuses to let a repository be created in dir when dir
// holds anything, dot-files included, and is not a repository already.
// Only another job's atomic write of the repository file is allowed.
func checkInitEmpty(fsys repo.FS, dir string) error {
	abs, err := fsys.Abs(dir)
	if err != nil {
		return err
	}
	entries, err := fsys.ReadDir(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("repository %s: %w", dir, err)
	}
	if _, err := fsys.Lstat(filepath.Join(abs, repo.RepoFileName)); err == nil {
		return nil
	}
	if name := NotEmpty(entries); name != "" {
		return fmt.Errorf("%s is not empty (it holds %s) and is not a sendense repository: a repository is created only in a missing or empty directory", dir, name)
	}
	return nil
}

// NotEmpty returns the first entry that keeps a directory from being
// empty for OpenOrInitEmptyRepository, "" if none: any entry, dot-files
// included, but another job's atomic write of the repository file.
func NotEmpty(entries []fs.DirEntry) string {
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "."+repo.RepoFileName+".tmp-") {
			return e.Name()
		}
	}
	return ""
}
