/* master.h: placeholder, being written. */
#pragma once
