package qemu

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sendense/capture/internal/nbd"
)

// secretTools returns tools that encrypt the images at paths, each with
// a random secret of its own, and the secrets.
func secretTools(paths ...string) (*Tools, map[string][]byte) {
	sec := map[string][]byte{}
	for _, p := range paths {
		b := make([]byte, 32)
		rand.Read(b)
		sec[p] = fmt.Appendf(nil, "%x", b)
	}
	return &Tools{Runner: LocalRunner{}, Secret: func(p string) []byte { return sec[p] }}, sec
}

// TestCreateLUKS creates encrypted images the fast way (createLUKS, with
// its fixed iteration count) and checks them with plain qemu tools given
// the secret in a file, as docs/repository.md tells an operator to
// recover: they unlock with the secret and only with it, qemu-img check
// finds them clean, data written through qemu-nbd reads back, and an
// overlay names its backing file.
func TestCreateLUKS(t *testing.T) {
	requireQemu(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	const size = 1024*mib + 512 // three L1 entries, not cluster-aligned
	tools, sec := secretTools(base, top)
	if err := tools.CreateImage(ctx, base, size, ""); err != nil {
		t.Fatal(err)
	}
	if err := tools.CreateImage(ctx, top, size, "base.qcow2"); err != nil {
		t.Fatal(err)
	}
	if err := tools.CreateImage(ctx, base, size, ""); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("creating over an existing image: got %v, want an error", err)
	}
	for _, p := range []string{base, top} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", p, err, fi.Mode())
		}
	}

	secretFile := func(s []byte) string {
		f := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(f, s, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	// qemu runs plain qemu-img with the secrets in files; opts opens
	// image (its secret in object s0) alone or over base (object s1).
	qemu := func(args ...string) (string, error) {
		out, err := exec.Command("qemu-img", args...).CombinedOutput()
		return string(out), err
	}
	object := func(id string, s []byte) []string {
		return []string{"--object", "secret,id=" + id + ",file=" + secretFile(s)}
	}
	alone := func(image, id string) string {
		return "driver=qcow2,file.filename=" + image + ",encrypt.key-secret=" + id
	}
	overlay := "driver=qcow2,file.filename=" + top + ",encrypt.key-secret=s1,backing.driver=qcow2,backing.file.filename=" +
		base + ",backing.encrypt.key-secret=s0"
	both := append(object("s0", sec[base]), object("s1", sec[top])...)

	// The fast path made them: qemu-img reports the fixed iteration count.
	out, err := qemu(append([]string{"info", "--output=json", "--image-opts"}, alone(base, "s0"))...)
	if err != nil {
		t.Fatalf("qemu-img info: %v: %s", err, out)
	}
	var info struct {
		Encrypted       bool   `json:"encrypted"`
		VirtualSize     uint64 `json:"virtual-size"`
		BackingFilename string `json:"backing-filename"`
		Specific        struct {
			Data struct {
				Compat  string `json:"compat"`
				Encrypt struct {
					Format     string `json:"format"`
					Cipher     string `json:"cipher-alg"`
					Mode       string `json:"cipher-mode"`
					Hash       string `json:"hash-alg"`
					Ivgen      string `json:"ivgen-alg"`
					MasterIter int    `json:"master-key-iters"`
					Slots      []struct {
						Active  bool `json:"active"`
						Iters   int  `json:"iters"`
						Stripes int  `json:"stripes"`
					} `json:"slots"`
				} `json:"encrypt"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	e := info.Specific.Data.Encrypt
	if !info.Encrypted || info.VirtualSize != size || info.Specific.Data.Compat != "1.1" ||
		e.Format != "luks" || e.Cipher != "aes-256" || e.Mode != "xts" || e.Hash != "sha256" || e.Ivgen != "plain64" ||
		e.MasterIter != luksIterations || len(e.Slots) != 8 || !e.Slots[0].Active || e.Slots[0].Iters != luksIterations ||
		e.Slots[0].Stripes != 4000 || e.Slots[1].Active {
		t.Fatalf("qemu-img info: %s", out)
	}

	// A wrong secret does not unlock it.
	wrong := append([]byte(nil), sec[base]...)
	wrong[0] ^= 1
	if out, err := qemu(append(append([]string{"compare"}, object("s0", wrong)...),
		"--image-opts", alone(base, "s0"), alone(base, "s0"))...); err == nil || !strings.Contains(out, "Invalid password") {
		t.Fatalf("opening with a wrong secret: %v: %s", err, out)
	}

	// Write through qemu-nbd (the secret on fd 3) into the base and the
	// overlay; plain qemu-img reads back what was written.
	want := filepath.Join(dir, "want.raw")
	wf, err := os.OpenFile(want, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()
	if err := wf.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		image string
		opts  ServeOptions
		off   uint64
	}{
		{base, ServeOptions{NoBacking: true}, 512*mib - mib}, // across two L2 tables
		{top, ServeOptions{Backing: []string{base}}, size - mib - 512},
	} {
		b := make([]byte, 2*mib)
		rand.Read(b)
		if w.off+uint64(len(b)) > size {
			b = b[:size-w.off]
		}
		srv, err := tools.ServeNBD(ctx, w.image, w.opts)
		if err != nil {
			t.Fatal(err)
		}
		h, err := nbd.Dial(srv.URI())
		if err != nil {
			srv.Close()
			t.Fatal(err)
		}
		if err := h.Pwrite(b, w.off, 0); err != nil {
			h.Close()
			srv.Close()
			t.Fatal(err)
		}
		closeAll(t, srv, h)
		if _, err := wf.WriteAt(b, int64(w.off)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := qemu(append(append([]string{"compare"}, both...), "--image-opts", overlay,
		"driver=raw,file.filename="+want)...); err != nil {
		t.Fatalf("qemu-img compare: %v: %s", err, out)
	}
	// Convert (prune's merge) writes into an image created the same way.
	merged := filepath.Join(dir, "merged.qcow2")
	sec[merged] = []byte("merged secret")
	if err := tools.Convert(ctx, top, merged, ConvertOptions{Backing: []string{base}, OutFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	both = append(both, object("s2", sec[merged])...)
	if out, err := qemu(append(append([]string{"compare"}, both...), "--image-opts", alone(merged, "s2"),
		"driver=raw,file.filename="+want)...); err != nil {
		t.Fatalf("qemu-img compare: %v: %s", err, out)
	}
	if out, err := qemu(append(append([]string{"info"}, both...), "--image-opts", alone(merged, "s2"))...); err != nil ||
		!strings.Contains(out, "master key iters: 1000") || strings.Contains(out, "backing file") {
		t.Fatalf("qemu-img info %s: %v: %s", merged, err, out)
	}

	for _, img := range []string{alone(base, "s0"), overlay, alone(merged, "s2")} {
		if out, err := qemu(append(append([]string{"check"}, both...), "--image-opts", img)...); err != nil ||
			!strings.Contains(out, "No errors were found") {
			t.Fatalf("qemu-img check %s: %v: %s", img, err, out)
		}
	}
	if out, err := qemu("info", top); err != nil || !strings.Contains(out, "backing file: base.qcow2") ||
		!strings.Contains(out, "backing file format: qcow2") {
		t.Fatalf("qemu-img info %s: %v: %s", top, err, out)
	}
}
