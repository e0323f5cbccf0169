package qemu

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestImageWriter writes an encrypted image and an overlay of it in
// process, with requests as the copy engine makes them (concurrent,
// whole clusters, pieces of clusters, zeroes, the short last cluster),
// and reads them back with plain qemu-img given the secrets: qemu-img
// check finds them clean and their content is what was written.
func TestImageWriter(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	const size = 70*mib + 3*512 // a short last cluster
	tools, sec := secretTools(base, top)
	want := make([]byte, size)

	// The base: 8 MiB of data in 256 KiB requests from 4 goroutines, and
	// pieces.
	w, err := tools.NewImageWriter(base, size, "")
	if err != nil {
		t.Fatal(err)
	}
	rand.Read(want[:8*mib])
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := g * 256 << 10; off < 8*mib; off += 4 * 256 << 10 {
				if err := w.WriteAt(want[off:off+256<<10], uint64(off)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	piece := func(w *ImageWriter, off, n int) {
		t.Helper()
		rand.Read(want[off : off+n])
		if err := w.WriteAt(want[off:off+n], uint64(off)); err != nil {
			t.Fatal(err)
		}
	}
	zero := func(w *ImageWriter, off, n int) {
		t.Helper()
		clear(want[off : off+n])
		if err := w.Zero(uint64(off), uint64(n)); err != nil {
			t.Fatal(err)
		}
	}
	piece(w, 10*mib+512, 512)   // one sector of a cluster
	piece(w, 12*mib-2048, 4096) // across two clusters
	piece(w, size-1024, 1024)   // the end of the short last cluster
	zero(w, 1*mib, 128<<10)     // zeroes over data: overwritten
	zero(w, 2*mib+4096, 8192)   // a piece of data zeroed
	piece(w, 3*mib+512, 1024)   // over whole data: read back, merged
	zero(w, 20*mib, 10*mib)     // nothing there
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := w.WriteAt(make([]byte, 100), 0); err == nil {
		t.Error("a request of part of a sector was accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tools.NewImageWriter(base, size, ""); err == nil {
		t.Fatal("an existing image was overwritten")
	}
	if fi, err := os.Stat(base); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v; want mode 0600", base, err)
	}
	readBack(t, sec, base, "", want)

	// The overlay: whole clusters of data and of zeroes over the base's
	// data, a cluster in two requests, the short last cluster whole.
	o, err := tools.NewImageWriter(top, size, "base.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	piece(o, 4*mib, 3*65536)
	zero(o, 5*mib, 65536)
	piece(o, 6*mib, 32768)
	piece(o, 6*mib+32768, 32768)
	zero(o, 7*mib, 2*65536)
	last := size &^ (65536 - 1)
	piece(o, last, size-last)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	readBack(t, sec, top, base, want)

	// An overlay cluster written in part cannot be completed: Close fails.
	bad := filepath.Join(dir, "bad.qcow2")
	sec[bad] = sec[top]
	b, err := tools.NewImageWriter(bad, size, "base.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAt(make([]byte, 512), 65536); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err == nil || !strings.Contains(err.Error(), "written only in part") {
		t.Fatalf("closing an overlay with a partial cluster: %v", err)
	}

	// Many clusters in pieces: past maxPartial some are written early,
	// and their later pieces merge with what was written.
	defer func(n int) { maxPartial = n }(maxPartial)
	maxPartial = 2
	pieces := filepath.Join(dir, "pieces.qcow2")
	sec[pieces] = sec[base]
	pw, err := tools.NewImageWriter(pieces, size, "")
	if err != nil {
		t.Fatal(err)
	}
	want = make([]byte, size)
	for half := range 2 {
		for c := range 10 {
			piece(pw, c*3*65536+half*32768, 4096)
		}
	}
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	readBack(t, sec, pieces, "", want)

	// Not for images without a secret or on another machine.
	plain := &Tools{Runner: LocalRunner{}}
	if _, err := plain.NewImageWriter(filepath.Join(dir, "p.qcow2"), size, ""); !errors.Is(err, ErrWriterUnsupported) {
		t.Errorf("a plain image: %v, want ErrWriterUnsupported", err)
	}
}

// readBack checks image (over backing, when not "") with plain qemu-img
// and the secrets in files, and compares its content with want.
func readBack(t *testing.T, sec map[string][]byte, image, backing string, want []byte) {
	t.Helper()
	dir := t.TempDir()
	var args []string
	opts := "driver=qcow2,file.filename=" + image + ",encrypt.key-secret=s0"
	for i, p := range []string{image, backing} {
		if p == "" {
			continue
		}
		f := filepath.Join(dir, fmt.Sprint("secret", i))
		if err := os.WriteFile(f, sec[p], 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--object", fmt.Sprintf("secret,id=s%d,file=%s", i, f))
	}
	if backing != "" {
		opts += ",backing.driver=qcow2,backing.file.filename=" + backing + ",backing.encrypt.key-secret=s1"
	}
	if out, err := exec.Command("qemu-img", append(append([]string{"check"}, args...), "--image-opts", opts)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check %s: %v: %s", image, err, out)
	}
	raw := filepath.Join(dir, "raw")
	if out, err := exec.Command("qemu-img", append(append([]string{"convert"}, args...), "--image-opts", opts, "-O", "raw", raw)...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", image, err, out)
	}
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", image, len(got), len(want))
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: content differs from what was written, first at byte %d", image, i)
			}
		}
	}
}

// TestImageWriterLarge writes more clusters than one refcount block
// counts (32768 of 64 KiB: 2 GiB), so that Close appends refcount blocks
// that count themselves: qemu-img check finds the image clean and reads
// the clusters on both sides of the first block's end.
func TestImageWriterLarge(t *testing.T) {
	requireQemu(t)
	if testing.Short() {
		t.Skip("writes 2 GiB")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "big.qcow2")
	secret := []byte("0123456789abcdef0123456789abcdef")
	tools := &Tools{Runner: LocalRunner{}, Secret: func(string) []byte { return secret }}
	const clusters = 33000
	w, err := tools.NewImageWriter(img, 4<<30, "")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16*65536)
	for c := 0; c < clusters; c += 16 {
		for i := range 16 {
			clear(buf[i*65536 : (i+1)*65536])
			buf[i*65536] = byte((c+i)%251 + 1)
		}
		if err := w.WriteAt(buf, uint64(c)*65536); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sf := filepath.Join(dir, "secret")
	os.WriteFile(sf, secret, 0o600)
	opts := "driver=qcow2,file.filename=" + img + ",encrypt.key-secret=s0"
	obj := "secret,id=s0,file=" + sf
	if out, err := exec.Command("qemu-img", "check", "--object", obj, "--image-opts", opts).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v: %s", err, out)
	}
	for _, c := range []int{0, 32000, 32767, 32768, 32999} {
		cmd := fmt.Sprintf("read -P %d %d 1", c%251+1, c*65536)
		zero := fmt.Sprintf("read -P 0 %d 65535", c*65536+1)
		if out, err := exec.Command("qemu-io", "--object", obj, "--image-opts", opts, "-c", cmd, "-c", zero).CombinedOutput(); err != nil || strings.Contains(string(out), "Pattern verification failed") {
			t.Fatalf("cluster %d: %v: %s", c, err, out)
		}
	}
}
