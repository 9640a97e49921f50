/* coro.h: placeholder, being written. */
#pragma once
