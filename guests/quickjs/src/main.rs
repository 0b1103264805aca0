//! cella's JavaScript plug-in: the QuickJS engine (through rquickjs) as a WASI command.
//!
//! It is used in two steps, so that no invocation pays for starting the engine or for parsing
//! the function's code:
//!
//! 1. **Pre-initialisation** (`wizer-initialize`, run by the platform at plug-in registration and
//!    again at deploy): the first run creates the runtime and a context; a later run reads a
//!    function's ES module source from stdin, evaluates it and keeps its default export. The
//!    platform snapshots memory after each step, so a function's image holds the engine with the
//!    function's code already evaluated.
//! 2. **Invocation** (`_start`, from that snapshot, in a fresh instance every time): stdin is
//!    the request body, the handler's result is written to stdout, `console.log` goes to stderr
//!    (the invocation's log), and an uncaught exception exits with status 1 and its message.
//!
//! What a handler gets and may return is documented in `docs/javascript.md`.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::process::ExitCode;

use rquickjs::function::{Func, Rest};
use rquickjs::{
    CatchResultExt, CaughtError, Coerced, Context, Ctx, Function, Module, Object, Persistent,
    Runtime, TypedArray, Value,
};

/// The context keeps its runtime alive. Fields drop in order: the values the context holds
/// go first (QuickJS refuses to free a runtime that still has live objects).
struct Engine {
    /// Gives a request object its methods; made once, part of the snapshot.
    make_request: Persistent<Function<'static>>,
    handler: Option<Persistent<Function<'static>>>,
    context: Context,
}

thread_local! {
    /// Filled by pre-initialisation and therefore part of the snapshot.
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
}

/// Pre-initialisation entry point (the name the platform's snapshotter calls). Idempotent:
/// the engine is created once; a non-empty stdin is a function's module, evaluated once.
#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn initialize() {
    if let Err(message) = initialize_inner() {
        eprintln!("{message}");
        std::process::exit(1);
    }
}

fn initialize_inner() -> Result<(), String> {
    let mut source = String::new();
    std::io::stdin()
        .read_to_string(&mut source)
        .map_err(|e| format!("the function's source is not UTF-8 text: {e}"))?;
    ENGINE.with_borrow_mut(|slot| {
        let first = slot.is_none();
        if first {
            *slot = Some(new_engine()?);
        }
        let engine = slot.as_mut().expect("just created");
        if source.trim().is_empty() {
            // Starting the engine is the plug-in's own initialisation; a function must bring
            // a module.
            return match first {
                true => Ok(()),
                false => Err("the function's module is empty: write \
                              `export default function handler(request) { … }`"
                    .to_owned()),
            };
        }
        if engine.handler.is_some() {
            return Err("this image already holds a function".to_owned());
        }
        engine.handler = Some(load_module(&engine.context, source)?);
        Ok(())
    })
}

fn new_engine() -> Result<Engine, String> {
    let runtime = Runtime::new().map_err(|e| format!("starting QuickJS: {e}"))?;
    let context = Context::full(&runtime).map_err(|e| format!("creating a context: {e}"))?;
    let make_request = context.with(|ctx| {
        install_console(&ctx).map_err(|e| format!("installing console: {e}"))?;
        install_random(&ctx).map_err(|e| format!("installing Math.random: {e}"))?;
        install_state(&ctx).map_err(|e| format!("installing cella.state: {e}"))?;
        let make: Function = ctx
            .eval(REQUEST_METHODS)
            .map_err(|e| format!("compiling the request helper: {e}"))?;
        Ok::<_, String>(Persistent::save(&ctx, make))
    })?;
    Ok(Engine {
        make_request,
        handler: None,
        context,
    })
}

/// Adds the body readers to a request object.
const REQUEST_METHODS: &str = "(function (request) {
    Object.defineProperty(request, '__bytes', { enumerable: false });
    request.text = function () { return this.body; };
    request.json = function () { return JSON.parse(this.body); };
    request.bytes = function () { return this.__bytes; };
    return request;
})";

/// Evaluates the function's ES module and keeps its default export, which must be a function.
fn load_module(context: &Context, source: String) -> Result<Persistent<Function<'static>>, String> {
    context.with(|ctx| {
        let (module, done) = Module::declare(ctx.clone(), "function.js", source)
            .and_then(|m| m.eval())
            .catch(&ctx)
            .map_err(|e| describe("the module failed to load", e))?;
        done.finish::<()>()
            .catch(&ctx)
            .map_err(|e| describe("the module failed to evaluate", e))?;
        let handler: Value = module
            .get("default")
            .catch(&ctx)
            .map_err(|e| describe("reading the default export", e))?;
        let Some(handler) = handler.into_function() else {
            return Err("the module has no default export that is a function: \
                 write `export default function handler(request) { … }`"
                .to_owned());
        };
        Ok(Persistent::save(&ctx, handler))
    })
}

/// `console.log`/`info`/`debug` and `console.warn`/`error` all go to stderr, the invocation's
/// log; stdout is reserved for the response.
fn install_console(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let console = Object::new(ctx.clone())?;
    for level in ["log", "info", "debug", "warn", "error"] {
        console.set(
            level,
            Func::from(|args: Rest<Coerced<String>>| {
                let line: Vec<String> = args.0.into_iter().map(|a| a.0).collect();
                eprintln!("{}", line.join(" "));
            }),
        )?;
    }
    ctx.globals().set("console", console)
}

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("reading the request: {e}");
        return ExitCode::FAILURE;
    }
    let result = ENGINE.with_borrow(|engine| match engine {
        Some(
            engine @ Engine {
                handler: Some(handler),
                ..
            },
        ) => invoke(engine, handler.clone(), input),
        Some(_) => {
            Err("this image holds no function: deploy JavaScript source with this plug-in".into())
        }
        // The module as built, never pre-initialised: start the engine and evaluate argv[1] on
        // every request (the naive port `cella bench startup` compares against). A deployed
        // function always runs from an image that holds its own module.
        None => match std::env::args().nth(1) {
            Some(source) => new_engine().and_then(|engine| {
                let handler = load_module(&engine.context, source)?;
                invoke(&engine, handler, input)
            }),
            None => Err("no module: pass one as the first argument".into()),
        },
    });
    match result {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(&output)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// QuickJS does not check its stack depth on WASI: unbounded recursion ends when the sandbox's
/// limit on the WebAssembly stack traps the invocation.
fn invoke(
    engine: &Engine,
    handler: Persistent<Function<'static>>,
    input: Vec<u8>,
) -> Result<Vec<u8>, String> {
    engine.context.with(|ctx| {
        let request = request_object(&ctx, &engine.make_request, input)
            .map_err(|e| format!("building the request: {e}"))?;
        let handler = handler
            .restore(&ctx)
            .map_err(|e| format!("restoring the handler: {e}"))?;
        let returned: Value = handler
            .call((request,))
            .catch(&ctx)
            .map_err(|e| describe("Uncaught", e))?;
        let value = match returned.as_promise() {
            Some(promise) => promise
                .finish::<Value>()
                .catch(&ctx)
                .map_err(|e| describe("Uncaught (in promise)", e))?,
            None => returned,
        };
        response_bytes(&ctx, value)
    })
}

/// `Math.random` draws from the host's random source at every call. QuickJS's own generator
/// keeps its state in memory, which a snapshot would freeze: every instance of an image would
/// then see the same sequence.
fn install_random(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let random = Function::new(ctx.clone(), || {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("WASI random_get");
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    })?;
    let math: Object = ctx.globals().get("Math")?;
    math.set("random", random)
}

/// `cella.state.get(key)` (a string, or `undefined`), `cella.state.set(key, value)` and
/// `cella.state.delete(key)` (whether it existed): the function's sealed key-value state, with
/// string keys and values. Failures throw with the reason.
fn install_state(ctx: &Ctx<'_>) -> rquickjs::Result<()> {
    let fail = |ctx: &Ctx<'_>, code: i64| {
        rquickjs::Exception::throw_message(
            ctx,
            &format!("cella.state: {}", cella_state::describe(code)),
        )
    };
    let object = Object::new(ctx.clone())?;
    object.set(
        "get",
        Func::from(
            move |ctx: Ctx<'_>, key: String| -> rquickjs::Result<Option<String>> {
                match cella_state::get(key.as_bytes()) {
                    Ok(value) => Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned())),
                    Err(code) => Err(fail(&ctx, code)),
                }
            },
        ),
    )?;
    object.set(
        "set",
        Func::from(
            move |ctx: Ctx<'_>, key: String, value: Coerced<String>| -> rquickjs::Result<()> {
                cella_state::set(key.as_bytes(), value.0.as_bytes())
                    .map_err(|code| fail(&ctx, code))
            },
        ),
    )?;
    object.set(
        "delete",
        Func::from(move |ctx: Ctx<'_>, key: String| -> rquickjs::Result<bool> {
            cella_state::delete(key.as_bytes()).map_err(|code| fail(&ctx, code))
        }),
    )?;
    let cella = Object::new(ctx.clone())?;
    cella.set("state", object)?;
    ctx.globals().set("cella", cella)
}

/// `request.text()`, `request.json()` and `request.bytes()` read the body; `request.body` is
/// the same text as `text()`.
fn request_object<'js>(
    ctx: &Ctx<'js>,
    make_request: &Persistent<Function<'static>>,
    input: Vec<u8>,
) -> rquickjs::Result<Object<'js>> {
    let text = String::from_utf8_lossy(&input).into_owned();
    let request = Object::new(ctx.clone())?;
    request.set("body", text)?;
    let bytes = TypedArray::<u8>::new(ctx.clone(), input)?;
    request.set("__bytes", bytes)?;
    make_request.clone().restore(ctx)?.call((request,))
}

/// A string is sent as UTF-8, bytes as they are, `undefined`/`null` as nothing, and any other
/// value as its JSON.
fn response_bytes<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> Result<Vec<u8>, String> {
    if value.is_undefined() || value.is_null() {
        return Ok(Vec::new());
    }
    if let Some(text) = value.as_string() {
        return text
            .to_string()
            .map(String::into_bytes)
            .map_err(|e| e.to_string());
    }
    // SAFETY (both): the bytes are copied out at once, while no JavaScript runs that could
    // detach or resize the buffer.
    if let Ok(bytes) = TypedArray::<u8>::from_value(value.clone())
        && let Some(slice) = unsafe { bytes.as_bytes() }
    {
        return Ok(slice.to_vec());
    }
    if let Some(buffer) = value
        .as_object()
        .and_then(|o| rquickjs::ArrayBuffer::from_object(o.clone()))
        && let Some(slice) = unsafe { buffer.as_bytes() }
    {
        return Ok(slice.to_vec());
    }
    match ctx.json_stringify(value).catch(ctx) {
        Ok(Some(json)) => json
            .to_string()
            .map(String::into_bytes)
            .map_err(|e| e.to_string()),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(describe("the handler's result is not JSON-serialisable", e)),
    }
}

fn describe(what: &str, error: CaughtError<'_>) -> String {
    match error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            let name = exception
                .get::<_, Coerced<String>>("name")
                .map(|n| n.0)
                .unwrap_or_else(|_| "Error".to_owned());
            let stack = exception.stack().unwrap_or_default();
            format!("{what}: {name}: {message}\n{}", stack.trim_end())
        }
        CaughtError::Value(value) => {
            let shown = value
                .get::<Coerced<String>>()
                .map(|s| s.0)
                .unwrap_or_else(|_| "a value".to_owned());
            format!("{what}: {shown}")
        }
        CaughtError::Error(e) => format!("{what}: {e}"),
    }
}
