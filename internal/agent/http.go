package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
)

// maxBody bounds request bodies.
const maxBody = 1 << 20

// apiError is an error answer: {"error": Message, "detail": Detail}.
type apiError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Detail  string `json:"detail"`
}

func (e *apiError) Error() string { return e.Message + ": " + e.Detail }

func errorf(status int, msg, format string, a ...any) *apiError {
	return &apiError{Status: status, Message: msg, Detail: fmt.Sprintf(format, a...)}
}

// writeJSON writes v as the JSON answer.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(&apiError{Message: "internal error", Detail: "encoding the answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, e *apiError) { writeJSON(w, e.Status, e) }

// decodeJSON decodes a request body into dst: one JSON object, no unknown
// fields. Errors name the field and say what is wrong (400), or 413 for
// a body over maxBody.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any, fields string) *apiError {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			return errorf(http.StatusBadRequest, "malformed JSON", "unexpected data after the JSON object")
		}
		return nil
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var big *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, "empty request body", "send a JSON object with the fields %s", fields)
	case errors.As(err, &big):
		return errorf(http.StatusRequestEntityTooLarge, "request body too large", "the body must be at most %d bytes", maxBody)
	case errors.As(err, &syn):
		return errorf(http.StatusBadRequest, "malformed JSON", "at byte %d: %v", syn.Offset, syn)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, "malformed JSON", "the body ends in the middle of the JSON object")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return errorf(http.StatusBadRequest, "malformed JSON", "the body must be a JSON object, not %s", typ.Value)
		}
		return errorf(http.StatusBadRequest, fmt.Sprintf("invalid field %q", typ.Field), "field %q must be a %s, not %s", typ.Field, jsonKind(typ.Type), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		return errorf(http.StatusBadRequest, "unknown field "+name, "field %s is not accepted; the fields are %s", name, fields)
	}
	return errorf(http.StatusBadRequest, "malformed JSON", "%v", err)
}

// jsonKind names a Go type the JSON way.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Struct, reflect.Map:
		return "object"
	case reflect.Slice, reflect.Array:
		return "array"
	}
	return "number"
}

// recorder captures what a handler writes (for the mux's own 404/405).
type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) WriteHeader(code int)        { r.code = code }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }

// statusWriter remembers the status code for the request metrics.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// routes builds the handler: metrics and panic recovery around
// authentication around the routes, whose 404 and 405 answers are JSON too.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/health", s.handleHealth)
	mux.HandleFunc("GET /metrics", s.handleMetrics)
	mux.HandleFunc("GET /api/v1/vms", s.handleVMs)
	// {vm_path} is one URL-escaped segment (%2FDC0%2Fvm%2Fweb): the mux
	// unescapes it as a whole. An unescaped path falls to {rest...}.
	mux.HandleFunc("GET /api/v1/vms/{vm_path}/specs", s.vmHandler("specs"))
	mux.HandleFunc("GET /api/v1/vms/{vm_path}/disks", s.vmHandler("disks"))
	mux.HandleFunc("GET /api/v1/vms/{vm_path}/cbt-status", s.vmHandler("cbt-status"))
	mux.HandleFunc("GET /api/v1/vms/{rest...}", s.handleVMRest)
	mux.HandleFunc("POST /api/v1/backup/start", s.handleStart)
	mux.HandleFunc("GET /api/v1/backup", s.handleList)
	mux.HandleFunc("GET /api/v1/backup/{job_id}", s.handleJob)
	mux.HandleFunc("GET /api/v1/backup/{job_id}/progress", s.handleProgress)
	mux.HandleFunc("DELETE /api/v1/backup/{job_id}", s.handleCancel)

	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &recorder{h: http.Header{}}
		mux.ServeHTTP(rec, r)
		switch rec.code {
		case http.StatusNotFound:
			writeError(w, errorf(http.StatusNotFound, "not found", "no endpoint %s %s; see docs/api.md", r.Method, r.URL.Path))
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", rec.h.Get("Allow"))
			writeError(w, errorf(http.StatusMethodNotAllowed, "method not allowed", "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, rec.h.Get("Allow")))
		default: // a redirect to the clean path
			for k, v := range rec.h {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.code)
			w.Write(rec.body.Bytes())
		}
	})
	if s.token != nil {
		h = s.token.middleware(h)
	}
	redact := keyRedactor(s.cfg)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if redact != nil {
			w = redactWriter{w, redact}
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("API handler panic", "method", r.Method, "path", r.URL.Path, "panic", p)
				if sw.code == 0 {
					writeError(sw, errorf(http.StatusInternalServerError, "internal error", "the agent failed to answer; see its log"))
				}
			}
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			s.metrics.request(code)
		}()
		h.ServeHTTP(sw, r)
	})
}
