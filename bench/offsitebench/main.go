// Command offsitebench measures bench/offsite.sh's figures: the upload of
// one restore point to a real S3 server (SeaweedFS, build/weed) by
// 'sendense offsite sync', against minio-go's own uploader (FPutObject)
// sending the same files one stream at a time, as `aws s3 cp` of each
// file would, and with its default 4 threads. Runs alternate; each run
// has its own fresh server. It prints one line per run, the medians and
// "ratio R": the single-stream time over ours (throughput ratio).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/sendense/capture/internal/s3test"
)

func main() {
	weed := flag.String("weed", "build/weed", "weed binary")
	sendense := flag.String("sendense", "build/sendense", "sendense binary")
	repo := flag.String("repo", "", "repository holding the point (one VM, one backup)")
	runs := flag.Int("runs", 3, "runs")
	restore := flag.Bool("restore", false, "also compare restore by download with streaming range reads")
	flag.StringVar(&partSize, "part-size", "", "part_size of the target (default: sendense's)")
	flag.Parse()
	files, total := pointFiles(*repo)
	fmt.Printf("point: %d files, %.0f MiB (%s)\n", len(files), mib(total), strings.Join(names(files), ", "))
	var ours, single, threads []float64
	for r, tries := 1, 0; r <= *runs; r++ {
		srv, err := s3test.Start(*weed)
		if err != nil {
			log.Fatal(err)
		}
		measure := map[string]func() (float64, error){
			"ours":   func() (float64, error) { return sync(srv, *sendense, *repo) },
			"single": func() (float64, error) { return putObjects(srv, files, 1) },
			"4":      func() (float64, error) { return putObjects(srv, files, 4) },
		}
		order := []string{"ours", "single", "4"}
		if r%2 == 0 {
			slices.Reverse(order)
		}
		got := map[string]float64{}
		for _, k := range order {
			if got[k], err = measure[k](); err != nil {
				break
			}
		}
		srv.Stop()
		if err != nil {
			// The server failed a request (it happens under load): the
			// run does not count; try it again, twice at most.
			if tries++; tries > 2 {
				log.Fatal(err)
			}
			fmt.Printf("run %d: %v: running it again\n", r, err)
			r--
			continue
		}
		ours, single, threads = append(ours, got["ours"]), append(single, got["single"]), append(threads, got["4"])
		fmt.Printf("run %d: sendense offsite sync %.2f s (%.0f MiB/s) | minio-go FPutObject 1 stream %.2f s (%.0f MiB/s) | 4 threads %.2f s (%.0f MiB/s)\n",
			r, got["ours"], mib(total)/got["ours"], got["single"], mib(total)/got["single"], got["4"], mib(total)/got["4"])
	}
	mo, ms, m4 := median(ours), median(single), median(threads)
	fmt.Printf("median sendense offsite sync:        %.2f s, %.0f MiB/s\n", mo, mib(total)/mo)
	fmt.Printf("median minio-go FPutObject 1 stream: %.2f s, %.0f MiB/s\n", ms, mib(total)/ms)
	fmt.Printf("median minio-go FPutObject 4 threads: %.2f s, %.0f MiB/s (ratio %.2f)\n", m4, mib(total)/m4, m4/mo)
	if *restore {
		restoreCompare(*weed, *sendense, *repo)
	}
	fmt.Printf("ratio %.2f\n", ms/mo)
}

// restoreCompare restores the point from the bucket as sendense does
// (download the chain with ranged GETs in parallel, then qemu-img convert
// locally) and by streaming: qemu-img convert reading the qcow2 through
// nbdkit's curl plugin, one range GET per read, with 0 and 20 ms added
// to each (what a real S3's first-byte latency adds).
func restoreCompare(weed, sendense, repo string) {
	srv, err := s3test.Start(weed)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()
	dir, err := os.MkdirTemp("", "offsitebench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	b := bucket(srv)
	cfg := writeConfig(srv, dir, b)
	run := func(args ...string) {
		cmd := exec.Command(sendense, append([]string{"--config", cfg}, args...)...)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			log.Fatalf("sendense %v: %v", args, err)
		}
	}
	run("offsite", "sync", "--target", "bench", "--repo", repo, "--quiet")
	images, _ := filepath.Glob(filepath.Join(repo, "*", "*.qcow2"))
	vmDir := filepath.Base(filepath.Dir(images[0]))
	t0 := time.Now()
	run("restore", "--repo", "s3://bench/", vmDir, "--to", filepath.Join(dir, "r1"), "--quiet")
	td := time.Since(t0).Seconds()
	fmt.Printf("restore from the bucket, download then convert (sendense): %.2f s\n", td)
	os.RemoveAll(filepath.Join(dir, "r1"))
	// The same image in a plain bucket, read through the filer's HTTP
	// (ranges, HEAD) as nbdkit-curl needs.
	plain := fmt.Sprintf("plain-%d", time.Now().UnixNano())
	if err := srv.Client().MakeBucket(context.Background(), plain, minio.MakeBucketOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := srv.Client().FPutObject(context.Background(), plain, "image.qcow2", images[0], minio.PutObjectOptions{}); err != nil {
		log.Fatal(err)
	}
	url := srv.Filer + "/buckets/" + plain + "/image.qcow2"
	for _, delay := range []string{"0", "20ms"} {
		args := []string{"-U", "-"}
		if delay != "0" {
			args = append(args, "--filter=delay")
		}
		out := filepath.Join(dir, "stream.raw")
		args = append(args, "curl", "url="+url)
		if delay != "0" {
			args = append(args, "rdelay="+delay)
		}
		args = append(args, "--run", "qemu-img convert -f qcow2 -O raw \"$uri\" "+out)
		t0 := time.Now()
		cmd := exec.Command("nbdkit", args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Printf("streaming restore (nbdkit curl, delay %s): failed: %v\n", delay, err)
			continue
		}
		fmt.Printf("restore streaming range reads (qemu-img convert over nbdkit curl, %s added per read): %.2f s\n", delay, time.Since(t0).Seconds())
		os.Remove(out)
	}
}

var partSize string

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// pointFiles are the images and the manifest in the repository's VM
// directory.
func pointFiles(repo string) ([]string, int64) {
	dirs, _ := filepath.Glob(filepath.Join(repo, "*", "*.qcow2"))
	mans, _ := filepath.Glob(filepath.Join(repo, "*", "*Z.json"))
	files := append(dirs, mans...)
	if len(files) < 2 {
		log.Fatalf("no point in %s", repo)
	}
	var total int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			log.Fatal(err)
		}
		total += fi.Size()
	}
	return files, total
}

func names(files []string) []string {
	var out []string
	for _, f := range files {
		out = append(out, filepath.Base(f))
	}
	return out
}

func bucket(srv *s3test.Server) string {
	name := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if err := srv.Client().MakeBucket(context.Background(), name, minio.MakeBucketOptions{ObjectLocking: true}); err != nil {
		log.Fatal(err)
	}
	return name
}

// sync times 'sendense offsite sync' of the repository to a new bucket.
func sync(srv *s3test.Server, sendense, repo string) (float64, error) {
	dir, err := os.MkdirTemp("", "offsitebench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cfg := writeConfig(srv, dir, bucket(srv))
	cmd := exec.Command(sendense, "--config", cfg, "offsite", "sync", "--target", "bench", "--repo", repo, "--quiet")
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("sendense offsite sync: %v", err)
	}
	return time.Since(t0).Seconds(), nil
}

// writeConfig writes credentials and a configuration with target "bench"
// on bucket b into dir.
func writeConfig(srv *s3test.Server, dir, b string) string {
	access, secret := filepath.Join(dir, "access"), filepath.Join(dir, "secret")
	os.WriteFile(access, []byte(s3test.AccessKey), 0o600)
	os.WriteFile(secret, []byte(s3test.SecretKey), 0o600)
	cfg := filepath.Join(dir, "sendense.toml")
	os.WriteFile(cfg, fmt.Appendf(nil, `[[offsite]]
name = "bench"
endpoint = %q
bucket = %q
path_style = true
access_key_file = %q
secret_key_file = %q
object_lock_mode = "COMPLIANCE"
retention_days = 1
%s`, srv.Endpoint, b, access, secret, partSizeKey()), 0o600)
	return cfg
}

func partSizeKey() string {
	if partSize == "" {
		return ""
	}
	return fmt.Sprintf("part_size = %q\n", partSize)
}

// putObjects times minio-go's FPutObject of each file, one after the
// other, with threads parts in flight, locked as sendense locks them.
func putObjects(srv *s3test.Server, files []string, threads uint) (float64, error) {
	c := srv.Client()
	b := bucket(srv)
	t0 := time.Now()
	for _, f := range files {
		_, err := c.FPutObject(context.Background(), b, "site/"+filepath.Base(f), f, minio.PutObjectOptions{
			NumThreads: threads, Mode: minio.Compliance, RetainUntilDate: time.Now().Add(24 * time.Hour),
			ContentType: "application/octet-stream"})
		if err != nil {
			return 0, fmt.Errorf("FPutObject %s: %v", f, err)
		}
	}
	return time.Since(t0).Seconds(), nil
}
