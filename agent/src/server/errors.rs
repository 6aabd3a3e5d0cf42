//! Mapping I/O errors to gRPC statuses with messages that name the path.

use std::io;

use tonic::{Code, Status};

/// The OS error text without Rust's " (os error N)" suffix.
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// The gRPC code for an I/O error.
pub fn io_code(e: &io::Error) -> Code {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Code::NotFound,
        Some(libc::EEXIST) => Code::AlreadyExists,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => Code::PermissionDenied,
        Some(libc::ENOTEMPTY)
        | Some(libc::ENOTDIR)
        | Some(libc::EISDIR)
        | Some(libc::EXDEV)
        | Some(libc::EBUSY)
        | Some(libc::ETXTBSY) => Code::FailedPrecondition,
        Some(libc::EINVAL) | Some(libc::ENAMETOOLONG) | Some(libc::ELOOP) | Some(libc::ENOEXEC) => {
            Code::InvalidArgument
        }
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EMFILE) | Some(libc::ENFILE)
        | Some(libc::ENOMEM) => Code::ResourceExhausted,
        _ => match e.kind() {
            io::ErrorKind::NotFound => Code::NotFound,
            io::ErrorKind::AlreadyExists => Code::AlreadyExists,
            io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => Code::InvalidArgument,
            _ => Code::Internal,
        },
    }
}

/// A status with the code of `e` and the given message (or a default one when empty).
pub fn io_status(e: &io::Error, message: String) -> Status {
    let message = if message.is_empty() {
        strerror(e)
    } else {
        message
    };
    Status::new(io_code(e), message)
}

/// "cannot <what> '<path>': <error>" with the matching code.
pub fn path_status(what: &str, path: &str, e: &io::Error) -> Status {
    io_status(e, format!("cannot {what} '{path}': {}", strerror(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_messages() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        let s = path_status("open", "/nope", &e);
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(
            s.message(),
            "cannot open '/nope': No such file or directory"
        );
        let e = io::Error::from_raw_os_error(libc::ENOTEMPTY);
        assert_eq!(io_code(&e), Code::FailedPrecondition);
        assert_eq!(
            io_code(&io::Error::from_raw_os_error(libc::EEXIST)),
            Code::AlreadyExists
        );
        assert_eq!(
            io_code(&io::Error::from_raw_os_error(libc::EACCES)),
            Code::PermissionDenied
        );
    }
}
