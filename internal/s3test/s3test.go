// Package s3test starts a real S3 server for tests: SeaweedFS's weed
// (build/weed, built by 'make weed'; $SENDENSE_WEED wins) on loopback,
// with Object Lock, and creates buckets on it.
package s3test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The credentials the server accepts.
const (
	AccessKey = "AKSENDENSETEST01"
	SecretKey = "sendense-test-secret-0123456789abcdef"
)

// Server is a running SeaweedFS.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT, the S3 gateway
	Addr     string // 127.0.0.1:PORT
	Filer    string // http://127.0.0.1:PORT, the filer (buckets under /buckets/)
	cmd      *exec.Cmd
	dir      string
	done     chan struct{}
}

// Binary is the weed binary: $SENDENSE_WEED, else build/weed of this
// repository. Missing, the test is skipped, or fails when $CI is set
// (make test always builds it).
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SENDENSE_WEED"); p != "" {
		return p
	}
	_, f, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(f), "..", "..", "build", "weed")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: 'make weed' builds it (make test does)", p)
		}
		t.Skipf("%s is missing: run 'make weed' to test against a real SeaweedFS", p)
	}
	return p
}

func freePorts(n int) ([]int, error) {
	var out []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// Start starts weed server (master, volume, filer and S3 gateway) in a
// new directory; Stop stops it.
func Start(bin string) (*Server, error) {
	dir, err := os.MkdirTemp("", "sendense-weed-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	cfg := fmt.Sprintf(`{"identities":[{"name":"sendense","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","Write","List","Tagging"]}]}`, AccessKey, SecretKey)
	if err := os.WriteFile(filepath.Join(dir, "s3.json"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	os.Mkdir(filepath.Join(dir, "data"), 0o700)
	p, err := freePorts(8)
	if err != nil {
		return nil, err
	}
	args := []string{"server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=" + filepath.Join(dir, "data"),
		fmt.Sprint("-master.port=", p[0]), fmt.Sprint("-master.port.grpc=", p[1]),
		fmt.Sprint("-volume.port=", p[2]), fmt.Sprint("-volume.port.grpc=", p[3]),
		fmt.Sprint("-filer.port=", p[4]), fmt.Sprint("-filer.port.grpc=", p[5]),
		"-s3", fmt.Sprint("-s3.port=", p[6]), fmt.Sprint("-s3.port.grpc=", p[7]),
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=" + filepath.Join(dir, "s3.json"),
		"-master.volumeSizeLimitMB=256", "-volume.max=300"}
	log, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	s.Addr = fmt.Sprintf("127.0.0.1:%d", p[6])
	s.Filer = fmt.Sprintf("http://127.0.0.1:%d", p[4])
	s.Endpoint = "http://" + s.Addr
	deadline := time.Now().Add(120 * time.Second)
	for {
		// Ready when a signed request is answered (the filer is up).
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s.Client().ListBuckets(ctx)
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("weed server exited: %s", tail(string(b), 3000))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "weed.log"))
			s.Stop()
			return nil, fmt.Errorf("SeaweedFS did not start in 120 s: %v\n%s", err, tail(string(b), 3000))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Stop stops the server and removes its data.
func (s *Server) Stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	os.RemoveAll(s.dir)
}

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Shared starts one server for the whole test binary (stop it with
// StopShared in TestMain).
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	shared.once.Do(func() { shared.srv, shared.err = Start(bin) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

// StopShared stops the server Shared started, if any.
func StopShared() {
	if shared.srv != nil {
		shared.srv.Stop()
	}
}

// Client is a plain minio-go client with the server's credentials: what
// anyone holding the agent's keys can do.
func (s *Server) Client() *minio.Client {
	return clientFor(s.Endpoint)
}

func clientFor(endpoint string) *minio.Client {
	c, err := minio.New(strings.TrimPrefix(endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath,
		Transport: http.DefaultTransport,
	})
	if err != nil {
		panic(err)
	}
	return c
}

var seq struct {
	sync.Mutex
	n int
}

// Bucket creates a new bucket, with Object Lock when locked.
func (s *Server) Bucket(t testing.TB, locked bool) string {
	t.Helper()
	seq.Lock()
	seq.n++
	name := fmt.Sprintf("sendense-%d-%d", time.Now().UnixNano()%1e9, seq.n)
	seq.Unlock()
	if err := s.Client().MakeBucket(context.Background(), name, minio.MakeBucketOptions{ObjectLocking: locked}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	return name
}

// Credentials writes the access and secret key files into dir.
func Credentials(t testing.TB, dir string) (access, secret string) {
	t.Helper()
	access, secret = filepath.Join(dir, "s3.access"), filepath.Join(dir, "s3.secret")
	if err := os.WriteFile(access, []byte(AccessKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte(SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return access, secret
}
